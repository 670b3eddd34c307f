"""GGUF in, GGUF out: strict reading, bit-exact builds, remapped metadata, verify.

The real model is SmolLM2-135M-Instruct's Q4_1 GGUF from the PyPI wheel the
project already fetches (cached); tiny GGUFs written with the `gguf` package
cover bad inputs and per-layer metadata rules. Running grown GGUFs in
llama.cpp: tests/test_gguf_llama.py (optional, see docs/gguf.md).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import struct

import numpy as np
import pytest
from refusal import assert_refused

gguf = pytest.importorskip("gguf")

import dus.api  # noqa: E402
from dus.errors import InputError  # noqa: E402

SMOLLM2_LAYERS = 30


def write_tiny(path, arch="llama", n=4, metadata=None, quantized=True):
    """A small valid GGUF: token embedding, n blocks (one Q8_0 tensor each), an output norm."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(n)
    writer.add_embedding_length(32)
    writer.add_head_count(4)
    for key, (value, vtype, sub) in (metadata or {}).items():
        writer.add_key_value(key, value, vtype, sub_type=sub)
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((16, 32), dtype=np.float32))
    for i in range(n):
        weight = rng.standard_normal((32, 32), dtype=np.float32)
        if quantized:
            q = gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(f"blk.{i}.attn_q.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(f"blk.{i}.attn_q.weight", weight)
        writer.add_tensor(f"blk.{i}.attn_norm.weight", rng.standard_normal(32, dtype=np.float32))
    writer.add_tensor("output_norm.weight", rng.standard_normal(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@functools.lru_cache(maxsize=2)  # the source is read by several tests; gguf-py parses 49k tokens slowly
def _reader(path, mtime):
    return gguf.GGUFReader(str(path))


def reader(path):
    return _reader(str(path), os.path.getmtime(path))


def tensor_bytes(path) -> dict[str, bytes]:
    return {t.name: bytes(t.data.tobytes()) for t in reader(path).tensors}


def fields(path) -> dict:
    """Metadata as gguf-py reads it; a tokenizer array as its length and first and last items."""
    out = {}
    for key, f in reader(path).fields.items():
        if key.startswith("GGUF."):
            continue
        if f.types and f.types[0] == gguf.GGUFValueType.ARRAY and len(f.data) > 100:
            out[key] = (len(f.data), [f.parts[i].tobytes() for i in (f.data[0], f.data[-1])])
        else:
            out[key] = f.contents()
    return out


def expected_bytes(source: dict[str, bytes], layers: list[int]) -> dict[str, bytes]:
    """What a build must hold: non-layer tensors once, output block i = source block layers[i]."""
    out = {k: v for k, v in source.items() if not k.startswith("blk.")}
    for i, s in enumerate(layers):
        for name, data in source.items():
            if name.startswith(f"blk.{s}."):
                out[f"blk.{i}." + name[len(f"blk.{s}.") :]] = data
    return out


# --- the real model --------------------------------------------------------------------------


@pytest.mark.real_model
def test_reader_agrees_with_the_gguf_package(smollm2_gguf):
    from dus.read.gguf import open_gguf_source

    source = open_gguf_source(str(smollm2_gguf))
    tensors = reader(smollm2_gguf).tensors
    assert source.num_layers == SMOLLM2_LAYERS and source.layer_prefix == "blk."
    assert len(source.tensors) == len(tensors) == 272
    for t in tensors:
        info = source.tensors[t.name]
        assert (info.dtype, info.start, info.nbytes) == (t.tensor_type.name, t.data_offset, t.n_bytes), t.name
        assert info.shape == tuple(int(d) for d in reversed(t.shape))
    assert {i.dtype for i in source.tensors.values()} == {"F32", "Q4_1", "Q8_0"}


PLANS = {"dus8": dict(overlap=8), "repeats": dict(layers="0:3,2,2,1:30,29")}


@pytest.mark.real_model
@pytest.mark.parametrize("plan_name", PLANS)
def test_build_is_bit_exact_with_remapped_metadata(smollm2_gguf, tmp_path, plan_name, run_dus):
    out = tmp_path / "grown.gguf"
    record = dus.api.build(str(smollm2_gguf), out, **PLANS[plan_name])
    layers = [entry["source_layer"] for entry in json.loads(fields(out)["dus.plan"])["plan"]["layers"]]
    assert len(layers) == record["output"]["num_layers"]

    got, want = tensor_bytes(out), expected_bytes(tensor_bytes(smollm2_gguf), layers)
    assert set(got) == set(want)
    for name, data in want.items():
        assert got[name] == data, name

    meta, src = fields(out), fields(smollm2_gguf)
    assert meta["llama.block_count"] == len(layers)
    assert meta["general.base_model.count"] == 1
    assert meta["general.base_model.0.name"] == src["general.name"]
    assert meta["general.base_model.0.organization"] == "HuggingFaceTB"
    assert meta["tokenizer.ggml.tokens"] == src["tokenizer.ggml.tokens"]
    assert meta["general.size_label"] != src["general.size_label"]
    code, stdout, _ = run_dus("verify", out)
    assert code == 0 and "bytes of all" in stdout


@pytest.mark.real_model
def test_logits_equal_an_in_memory_reference(smollm2_gguf, tmp_path):
    """transformers de-quantizes both files the same way: the grown model's logits must equal,
    exactly, the source's layers deep-copied into plan order."""
    import torch
    import transformers
    from models import reference_model

    layers = list(range(0, 6)) + list(range(3, 9)) + [29]
    out = tmp_path / "grown.gguf"
    dus.api.build(str(smollm2_gguf), out, layers="0:6,3:9,29")
    source = transformers.AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name).eval()
    built = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name).eval()
    assert built.config.num_hidden_layers == len(layers)
    reference = reference_model(source, layers)
    ids = torch.randint(3, 49152, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(built(ids).logits, reference(ids).logits)


@pytest.mark.real_model
def test_split_output_and_split_source(smollm2_gguf, tmp_path, run_dus):
    code, stdout, err = run_dus(
        "build", smollm2_gguf, tmp_path / "split.gguf", "--overlap", "8", "--shard-size", "40MB"
    )
    assert code == 0, err
    firsts = sorted(tmp_path.glob("split-*-of-*.gguf"))
    count = len(firsts)
    assert count >= 3 and firsts[0].name == f"split-00001-of-{count:05d}.gguf"
    assert stdout.startswith(f"wrote {', '.join(map(str, firsts))}: 44 layers")  # not split.gguf, never written
    assert fields(firsts[1]) == {"split.no": 1, "split.count": count, "split.tensors.count": 398}
    assert run_dus("verify", tmp_path / "split.gguf")[0] == 0

    # A split set is a source too: rebuilding from it with the identity plan gives the same tensors.
    single = tmp_path / "single.gguf"
    assert run_dus("build", firsts[0], single, "--layers", "0:44")[0] == 0
    merged = {}
    for path in firsts:
        merged.update(tensor_bytes(path))
    assert tensor_bytes(single) == merged
    assert run_dus("verify", single)[0] == 0


@pytest.mark.real_model
def test_verify_catches_tampering(smollm2_gguf, tmp_path, run_dus):
    out = tmp_path / "grown.gguf"
    dus.api.build(str(smollm2_gguf), out, overlap=8)
    from dus.read.gguf import read_gguf

    start = read_gguf(str(out)).tensors["blk.30.ffn_up.weight"].start
    data = bytearray(out.read_bytes())
    data[start + 7] ^= 1
    out.write_bytes(bytes(data))
    code, _, err = run_dus("verify", out)
    assert_refused(code, err, "blk.30.ffn_up.weight", exit_code=1)

    data[start + 7] ^= 1  # restore, then change the metadata instead
    name = b"Smollm2 135M 8k"
    data[data.index(name) : data.index(name) + 1] = b"X"
    out.write_bytes(bytes(data))
    code, _, err = run_dus("verify", out)
    assert code == 1 and "general.name" in err


# --- tiny GGUFs: metadata rules --------------------------------------------------------------

U32, BOOL, ARRAY = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.BOOL, gguf.GGUFValueType.ARRAY


def test_per_layer_arrays_are_reindexed(tmp_path):
    src = write_tiny(
        tmp_path / "a.gguf",
        metadata={
            "llama.feed_forward_length": ([10, 11, 12, 13], ARRAY, U32),
            "llama.rope.dimension_sections": ([1, 2, 3, 4], ARRAY, U32),
        },
    )  # length 4 by chance: not per layer
    out = tmp_path / "b.gguf"
    dus.api.build(str(src), out, layers="0:2,1:4")
    meta = fields(out)
    assert meta["llama.block_count"] == 5
    assert meta["llama.feed_forward_length"] == [10, 11, 11, 12, 13]
    assert meta["llama.rope.dimension_sections"] == [1, 2, 3, 4]
    assert tensor_bytes(out) == expected_bytes(tensor_bytes(src), [0, 1, 1, 2, 3])


def test_periodic_sliding_window_becomes_a_per_layer_array(tmp_path):
    """gemma3 without a pattern key: llama.cpp's default is every 6th layer full; a plan that
    breaks the period gets the explicit bool array (true = sliding), a plan that keeps it does not."""
    window = {"gemma3.attention.sliding_window": (8, U32, None)}
    src = write_tiny(tmp_path / "g.gguf", arch="gemma3", n=12, metadata=window)
    dus.api.build(str(src), tmp_path / "dus.gguf", overlap=2)  # 0..9, 2..11
    pattern = fields(tmp_path / "dus.gguf")["gemma3.attention.sliding_window_pattern"]
    layers = list(range(10)) + list(range(2, 12))
    assert pattern == [s % 6 != 5 for s in layers]
    dus.api.build(str(src), tmp_path / "stack.gguf", layers="0:12,0:12")
    assert "gemma3.attention.sliding_window_pattern" not in fields(tmp_path / "stack.gguf")

    as_int = write_tiny(
        tmp_path / "i.gguf",
        arch="gemma3",
        n=4,
        metadata={**window, "gemma3.attention.sliding_window_pattern": (2, U32, None)},
    )
    dus.api.build(str(as_int), tmp_path / "i2.gguf", layers="0:3,2:4")
    assert fields(tmp_path / "i2.gguf")["gemma3.attention.sliding_window_pattern"] == [True, False, True, True, False]


def test_default_periods_follow_llama_cpp(tmp_path, run_dus):
    """llama.cpp's per-family default when no pattern key is given: gemma2 alternates (full at odd
    layers); cohere2moe is dense-first (full at i % 4 == 0); exaone4 slides only at 64 layers."""
    layers = [0, 1, 2, 2, 3]
    gemma2 = write_tiny(tmp_path / "g2.gguf", arch="gemma2")
    dus.api.build(str(gemma2), tmp_path / "g2o.gguf", layers="0:3,2:4")
    assert fields(tmp_path / "g2o.gguf")["gemma2.attention.sliding_window_pattern"] == [s % 2 == 0 for s in layers]
    cohere = write_tiny(tmp_path / "c.gguf", arch="cohere2moe")
    dus.api.build(str(cohere), tmp_path / "co.gguf", layers="0:3,2:4")
    assert fields(tmp_path / "co.gguf")["cohere2moe.attention.sliding_window_pattern"] == [s % 4 != 0 for s in layers]
    exaone = write_tiny(tmp_path / "e.gguf", arch="exaone4", n=64)
    assert run_dus("plan", exaone, "--layers", "0:32,0:32")[0] == 0
    code, _, err = run_dus("plan", exaone, "--overlap", "8")
    assert_refused(code, err, "only for 64-layer models")
    afmoe = write_tiny(tmp_path / "a.gguf", arch="afmoe", n=8)  # no RoPE in layers 3 and 7, by index
    assert run_dus("plan", afmoe, "--layers", "0:8,4:8")[0] == 0
    code, _, err = run_dus("plan", afmoe, "--layers", "0:6,3:8")
    assert code == 2 and "without RoPE" in err and "output layer 6 is source layer 3" in err


def test_index_derived_layers_are_refused_when_the_plan_breaks_them(tmp_path, run_dus):
    dense = write_tiny(tmp_path / "d.gguf", n=4, metadata={"llama.leading_dense_block_count": (1, U32, None)})
    dus.api.build(str(dense), tmp_path / "ok.gguf", layers="0:4,1:4")
    assert fields(tmp_path / "ok.gguf")["llama.leading_dense_block_count"] == 1
    code, _, err = run_dus("plan", dense, "--overlap", "1")  # 0,1,2 then 1,2,3: fine; 0:4,0:4 is not
    assert code == 0, err
    code, _, err = run_dus("plan", dense, "--layers", "0:4,0:4")
    assert_refused(code, err, "leading_dense_block_count")

    step = write_tiny(tmp_path / "s.gguf", n=4, metadata={"llama.interleave_moe_layer_step": (2, U32, None)})
    assert run_dus("plan", step, "--layers", "0:4,0:4")[0] == 0  # keeps every index's parity
    code, _, err = run_dus("plan", step, "--layers", "0:3,2:4")
    assert code == 2 and "interleave_moe_layer_step" in err


def test_only_byte_copies_and_gguf_outputs(tmp_path, run_dus):
    src = write_tiny(tmp_path / "a.gguf")
    for args, words in [
        (("--recipe", "expand", "--new-layers", "1"), "de-quantization"),
        (("--overlap", "1", "--dtype", "bfloat16"), "--dtype"),
        (("--preset", "solar"), "dtype float16"),
        (("--layers", "0:4,0:2,1"), "OUTPUT ending in .gguf"),
    ]:
        out = tmp_path / ("out" if args[0] == "--layers" else "out.gguf")
        code, _, err = run_dus("build", src, out, *args)
        assert_refused(code, err, words, outputs=out)
    from models import save_model

    save_model("llama", tmp_path / "hf")
    code, _, err = run_dus("build", tmp_path / "hf", tmp_path / "x.gguf", "--overlap", "1")
    assert code == 2 and "convert_hf_to_gguf" in err
    recipe = tmp_path / "blend.yaml"
    recipe.write_text(f"source: {src}\nlayers:\n  - range: [0, 2]\n  - blend: [1, 2]\n  - range: [2, 4]\n")
    code, _, err = run_dus("plan", "--config", recipe)
    assert code == 2 and "output layer 2 is a blend" in err


def test_unquantized_build_and_verify(tmp_path, run_dus):
    src = write_tiny(tmp_path / "f.gguf", quantized=False)
    code, stdout, _ = run_dus("plan", src, "--overlap", "1", "--json")
    planned = json.loads(stdout)
    assert code == 0 and planned["num_layers"] == 6 and planned["config"]["llama.block_count"] == 6
    assert planned["layer_prefix"] == "blk." and "dus.plan" not in planned["config"]
    out = tmp_path / "f2.gguf"
    code, stdout, err = run_dus("build", src, out, "--overlap", "1", "--verify")
    assert code == 0 and "verified" in stdout, err
    assert tensor_bytes(out) == expected_bytes(tensor_bytes(src), [0, 1, 2, 1, 2, 3])
    code, _, err = run_dus("build", src, out, "--overlap", "1")
    assert code == 2 and "already exists" in err


def test_force_replaces_the_whole_output_set(tmp_path, run_dus):
    """--force replaces what OUTPUT names: a split set of another count, or the single file, is removed."""
    src = write_tiny(tmp_path / "f.gguf", quantized=False)
    out = tmp_path / "o" / "out.gguf"

    def built(*extra):
        code, _, err = run_dus("build", src, out, "--overlap", "1", "--force", *extra)
        assert code == 0, err
        assert run_dus("verify", out)[0] == 0
        return sorted(p.name for p in out.parent.iterdir())

    split3 = built("--shard-size", "5KB")
    assert len(split3) >= 3 and split3[0] == f"out-00001-of-{len(split3):05d}.gguf"
    assert built() == ["out.gguf"]
    split2 = built("--shard-size", "9KB")
    assert 2 <= len(split2) < len(split3) and all(name.endswith(f"-of-{len(split2):05d}.gguf") for name in split2)
    (out.parent / "out-extra.gguf").write_bytes(b"not ours")  # another name: left alone
    assert built() == ["out-extra.gguf", "out.gguf"]


def test_gguf_output_is_locked_and_dead_runs_are_swept(tmp_path, run_dus):
    from dus.core.publish import output_lock

    src = write_tiny(tmp_path / "f.gguf", quantized=False)
    out = tmp_path / "out.gguf"
    with output_lock(tmp_path, out.name):
        code, _, err = run_dus("build", src, out, "--overlap", "1")
    assert code == 1 and "being written by another dus process" in err and not out.exists()
    leftover = tmp_path / ".out.gguf.dus-partial-999999999"  # a killed run's staging directory
    leftover.mkdir()
    (leftover / "out.gguf").write_bytes(b"half")
    code, _, err = run_dus("build", src, out, "--overlap", "1")
    assert code == 0 and "removed stale .out.gguf.dus-partial-999999999" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.gguf", "out.gguf"]


# --- tiny GGUFs: bad inputs ------------------------------------------------------------------


def _tensor_field_offsets(path, name):
    """Byte positions of a tensor info's ggml type and data offset."""
    t = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == name)
    type_at = t.field.offset + 8 + len(name) + 4 + 8 * len(t.shape)
    return type_at, type_at + 4


def _array_type_at(path, key="llama.feed_forward_length"):
    """Byte position of a metadata value's type (its array item type and length follow)."""
    return gguf.GGUFReader(str(path)).fields[key].offset + 8 + len(key)


def _patched(data: bytes, at: int, fmt: str, value) -> bytes:
    raw = struct.pack(fmt, value)
    return data[:at] + raw + data[at + len(raw) :]


BAD = {
    "wrong magic": (lambda d, p: b"GGUX" + d[4:], "bad magic"),
    "truncated": (lambda d, p: d[:-100], "runs past the end"),
    "header only": (lambda d, p: d[:40], "more than the file can hold"),
    "version 2": (lambda d, p: _patched(d, 4, "<I", 2), "version 2"),
    "big-endian": (lambda d, p: _patched(d, 4, ">I", 3), "big-endian"),
    "lying kv count": (lambda d, p: _patched(d, 16, "<Q", 2**40), "more than the file can hold"),
    "lying key length": (lambda d, p: _patched(d, 24, "<Q", 2**50), "runs past the end"),
    "lying array length": (lambda d, p: _patched(d, _array_type_at(p) + 8, "<Q", 2**40), "runs past the end"),
    "unknown value type": (lambda d, p: _patched(d, _array_type_at(p), "<I", 13), "unknown value type 13"),
    "offset past the end": (
        lambda d, p: _patched(d, _tensor_field_offsets(p, "output_norm.weight")[1], "<Q", 2**32),
        "runs past the end",
    ),
    "misaligned data": (
        lambda d, p: _patched(d, _tensor_field_offsets(p, "output_norm.weight")[1], "<Q", 4),
        "not aligned",
    ),
    "overlapping tensors": (
        lambda d, p: _patched(d, _tensor_field_offsets(p, "output_norm.weight")[1], "<Q", 0),
        "overlaps",
    ),
    "unknown ggml type": (
        lambda d, p: _patched(d, _tensor_field_offsets(p, "blk.1.attn_q.weight")[0], "<I", 4),
        "unknown ggml type 4",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_gguf_is_refused_in_one_line(case, tmp_path, run_dus):
    good = write_tiny(tmp_path / "good.gguf", metadata={"llama.feed_forward_length": ([1, 2, 3, 4], ARRAY, U32)})
    corrupt, fragment = BAD[case]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(corrupt(good.read_bytes(), good))
    code, out, err = run_dus("plan", bad)
    assert assert_refused(code, err, fragment).startswith("error: bad.gguf: ")


def test_split_set_must_be_whole_and_consistent(tmp_path, run_dus):
    src = write_tiny(tmp_path / "a.gguf")
    dus.api.build(str(src), tmp_path / "s.gguf", layers="0:4", shard_size=2000)
    parts = sorted(tmp_path.glob("s-*.gguf"))
    assert len(parts) > 2
    code, _, err = run_dus("plan", parts[1])
    assert code == 2 and "first file" in err
    shutil.move(parts[-1], tmp_path / "gone")
    code, _, err = run_dus("plan", parts[0])
    assert code == 2 and f"{parts[-1]}: does not exist" in err


def test_alignment_must_be_a_power_of_two(tmp_path):
    from dus.read.gguf import read_gguf

    path = write_tiny(tmp_path / "a.gguf", metadata={"general.alignment": (48, U32, None)})
    with pytest.raises(InputError, match="power of two"):
        read_gguf(str(path))
