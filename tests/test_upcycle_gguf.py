"""`dus upcycle model.gguf out.gguf`: llama -> llama with experts, every expert block-for-block bytes."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import dus.api  # noqa: E402
from dus.errors import InputError  # noqa: E402
from dus.verify.check import VerifyError  # noqa: E402


def write_dense(path, arch="llama", metadata=None):
    """A 2-block GGUF with a Q8_0 gated MLP (n_ff 64) and F32 norms."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(2)
    writer.add_embedding_length(32)
    writer.add_head_count(4)
    writer.add_feed_forward_length(64)
    for key, value in (metadata or {}).items():
        writer.add_uint32(key, value)
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((16, 32), dtype=np.float32))
    for i in range(2):
        for name, shape in (("ffn_gate", (64, 32)), ("ffn_up", (64, 32)), ("ffn_down", (32, 64))):
            q = gguf.quants.quantize(rng.standard_normal(shape, dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(f"blk.{i}.{name}.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", rng.standard_normal(32, dtype=np.float32))
    writer.add_tensor("output_norm.weight", rng.standard_normal(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _tensors(path):
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


def test_experts_are_stacked_byte_copies_and_the_router_is_f32_zeros(tmp_path):
    source = write_dense(tmp_path / "dense.gguf")
    out = tmp_path / "moe.gguf"
    dus.api.upcycle(str(source), out, experts=4, top_k=2, verify=True)
    dense, moe = _tensors(source), _tensors(out)
    for i in range(2):
        for name in ("ffn_gate", "ffn_up", "ffn_down"):
            stacked = moe[f"blk.{i}.{name}_exps.weight"]
            assert stacked.tensor_type == gguf.GGMLQuantizationType.Q8_0
            assert list(stacked.shape) == [*dense[f"{name}.weight".join((f"blk.{i}.", ""))].shape, 4]
            assert stacked.data.tobytes() == dense[f"blk.{i}.{name}.weight"].data.tobytes() * 4
            assert f"blk.{i}.{name}.weight" not in moe
        router = moe[f"blk.{i}.ffn_gate_inp.weight"]
        assert router.tensor_type == gguf.GGMLQuantizationType.F32 and list(router.shape) == [32, 4]
        assert not router.data.any()
    fields = gguf.GGUFReader(str(out)).fields
    assert fields["llama.expert_count"].contents() == 4 and fields["llama.expert_used_count"].contents() == 2


def test_verify_catches_a_changed_expert_byte(tmp_path):
    source = write_dense(tmp_path / "dense.gguf")
    out = tmp_path / "moe.gguf"
    dus.api.upcycle(str(source), out, experts=2, top_k=1)
    stacked = _tensors(out)["blk.1.ffn_up_exps.weight"]
    offset = int(stacked.data_offset) + stacked.n_bytes - 1  # the last byte of the second expert
    data = bytearray(out.read_bytes())
    data[offset] ^= 1
    out.write_bytes(bytes(data))
    with pytest.raises(VerifyError, match="ffn_up_exps"):
        dus.api.verify(out)


@pytest.mark.parametrize(
    "kwargs, metadata, arch, message",
    [
        ({"expert_init": "drop"}, None, "llama", "de-quantization"),
        ({}, {"llama.expert_count": 8}, "llama", "already a mixture of experts"),
        ({}, None, "gemma2", "cannot upcycle a GGUF of architecture gemma2"),
    ],
)
def test_what_a_gguf_cannot_upcycle_is_refused(kwargs, metadata, arch, message, tmp_path):
    source = write_dense(tmp_path / "dense.gguf", arch, metadata)
    with pytest.raises(InputError, match=message):
        dus.api.upcycle(str(source), tmp_path / "moe.gguf", experts=4, top_k=2, **kwargs)
    assert not (tmp_path / "moe.gguf").exists()


def test_plan_shows_the_stacked_layout(tmp_path, run_dus):
    source = write_dense(tmp_path / "dense.gguf")
    code, out, err = run_dus("plan", source, "--layers", "0:2", "--experts", "4", "--top-k", "2")
    assert code == 0, err
    assert "blk.N.ffn_{gate,up,down}_exps.weight (4 stacked byte copies" in out


@pytest.mark.real_model
def test_smollm2_q4_1_upcycles_and_verifies(smollm2_gguf, tmp_path):
    out = tmp_path / "smol-moe.gguf"
    dus.api.upcycle(str(smollm2_gguf), out, experts=4, top_k=2, verify=True)
    moe = _tensors(out)
    assert moe["blk.29.ffn_down_exps.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_1
