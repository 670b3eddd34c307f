"""Per-layer embeddings (Gemma-3n, Gemma-4): tensors outside the stack holding one block per layer are
rearranged block by block in plan order, as byte ranges that `dus verify` proves; KV-shared layers are exact
or refused by the structural check."""

import json

import pytest
import torch
from models import assert_verified, load_tensors
from refusal import assert_refused

import dus.api
from dus.errors import InputError
from dus.testing import architectures

PLAN = [0, 1, 2, 3, 2, 3, 4, 5]  # --overlap 2 of 6 layers
PACKED = {"model.embed_tokens_per_layer.weight": 1, "model.per_layer_model_projection.weight": 0}


@pytest.fixture(scope="module")
def gemma3n(tmp_path_factory):
    """A tiny Gemma-3n text model without KV sharing (6 layers, per-layer width 8)."""
    directory = tmp_path_factory.mktemp("gemma3n") / "src"
    architectures.tiny_model("gemma3n_text", num_kv_shared_layers=0).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("model_type, extra", [("gemma3n_text", {"num_kv_shared_layers": 0}), ("gemma4_text", {})])
def test_logits_and_generation_equal_the_reference(model_type, extra, tmp_path):
    assert architectures.check(model_type, tmp_path, **extra) == ("exact", "")


def test_blocks_follow_the_plan_and_verify_proves_them(gemma3n, tmp_path):
    dus.api.build(str(gemma3n), tmp_path / "out", overlap=2)
    src, out = load_tensors(gemma3n), load_tensors(tmp_path / "out")
    for name, axis in PACKED.items():
        want = src[name].unflatten(axis, (6, 8)).index_select(axis, torch.tensor(PLAN)).flatten(axis, axis + 1)
        assert out[name].shape[axis] == 8 * len(PLAN)
        assert torch.equal(out[name].view(torch.int32), want.view(torch.int32)), name
    assert_verified(tmp_path / "out", layers=8)  # the rearranged tensors count as copies, none computed


def test_verify_catches_a_misplaced_block(gemma3n, tmp_path, run_dus):
    """A block moved inside the embedding, the shard's hash rewritten to match: the bytes still differ."""
    from test_verify import _rehash

    from dus.read.safetensors import read_header

    out = tmp_path / "out"
    dus.api.build(str(gemma3n), out, overlap=2)
    shard = out / "model.safetensors"
    info = read_header(str(shard))[0]["model.embed_tokens_per_layer.weight"]
    data = bytearray(shard.read_bytes())
    row = info.start + 5 * 64 * 4  # row 5 of [vocab, 64] float32; output layers 2 and 3 swap their blocks
    data[row + 64 : row + 96], data[row + 96 : row + 128] = data[row + 96 : row + 128], data[row + 64 : row + 96]
    shard.write_bytes(bytes(data))
    _rehash(out, shard)
    code, _, err = run_dus("verify", out)
    assert_refused(code, err, "'model.embed_tokens_per_layer.weight' bytes differ", exit_code=1)


def test_small_chunks_give_the_same_bytes(gemma3n):
    from dus.write.gather import block_chunks

    resolved = dus.api.plan(str(gemma3n), overlap=2)
    spec = next(s for s in resolved.tensors if s.name == "model.embed_tokens_per_layer.weight")
    assert spec.is_block_copy and not spec.is_byte_copy
    whole = b"".join(block_chunks(spec))
    assert len(whole) == spec.nbytes and b"".join(block_chunks(spec, chunk=100)) == whole  # a chunk of one row


def test_dtype_change_is_computed_and_verified(gemma3n, tmp_path):
    dus.api.build(str(gemma3n), tmp_path / "out", overlap=2, dtype="bfloat16")
    src, out = load_tensors(gemma3n), load_tensors(tmp_path / "out")
    name = "model.per_layer_model_projection.weight"
    want = src[name].unflatten(0, (6, 8))[PLAN].flatten(0, 1).to(torch.bfloat16)
    assert torch.equal(out[name], want)
    dus.api.verify(tmp_path / "out")


def test_kv_shared_layers_refused_where_the_sharing_moves(tmp_path):
    """Gemma-3n's last 2 layers reuse the KV cache of the last earlier layer of their type; --overlap 2 moves
    which layer that is, so the structural check refuses, naming the difference."""
    verdict, detail = architectures.check("gemma3n_text", tmp_path)
    assert verdict == "refused" and "store_full_length_kv" in detail


def test_kv_shared_layers_exact_where_the_plan_keeps_the_sharing(tmp_path):
    """Repeating layers 0-1 first keeps layers 2 and 3 the last of their types before the shared ones."""
    assert architectures.check("gemma3n_text", tmp_path, build_options={"layers": "0:2,0:6"}) == ("exact", "")


def test_blends_refused_with_per_layer_embeddings(gemma3n, tmp_path):
    recipe = tmp_path / "r.yml"
    recipe.write_text(json.dumps({"source": str(gemma3n), "layers": [{"range": [0, 6]}, {"blend": [4, 5]}]}))
    with pytest.raises(InputError, match="one block per layer: a blended layer"):
        dus.api.plan(config=str(recipe))


def test_the_rearrangement_is_recorded_and_checked(gemma3n, tmp_path, run_dus):
    out = tmp_path / "out"
    dus.api.build(str(gemma3n), out, overlap=2)
    record = json.loads((out / "dus_plan.json").read_text())
    entry = record["rearranged"]["model.embed_tokens_per_layer.weight"]
    assert entry == {"rows": 96, "block_bytes": 8 * 4, "blocks": [["base", i] for i in PLAN]}
    entry["blocks"][2] = ["base", 3]
    (out / "dus_plan.json").write_text(json.dumps(record))
    code, _, err = run_dus("verify", out)
    assert_refused(code, err, "rearranged block by block differs", exit_code=1)


def test_projection_blocks_are_kernel_copies_and_checked(gemma3n, tmp_path, run_dus):
    """The projection's blocks of rows are contiguous: copied range by range, and verify compares each range."""
    from test_verify import _rehash

    from dus.read.safetensors import read_header
    from dus.write.gather import block_ranges

    name = "model.per_layer_model_projection.weight"
    resolved = dus.api.plan(str(gemma3n), overlap=2)
    spec = next(s for s in resolved.tensors if s.name == name)
    source = spec.parts[0][0]
    block = 8 * 32 * 4  # 8 rows of 32 float32
    assert block_ranges(spec) == [(source.path, source.start + i * block, block) for i in PLAN]
    out = tmp_path / "out"
    dus.api.build(str(gemma3n), out, overlap=2)
    shard = out / "model.safetensors"
    info = read_header(str(shard))[0][name]
    data = bytearray(shard.read_bytes())
    data[info.start + 7 * block + 5] ^= 0x01  # inside the last block (source layer 5)
    shard.write_bytes(bytes(data))
    _rehash(out, shard)
    code, _, err = run_dus("verify", out)
    assert_refused(code, err, f"'{name}' bytes differ", exit_code=1)


def test_no_mergekit_recipe_for_per_layer_embeddings(gemma3n, run_dus):
    """mergekit copies tensors outside the layers as they are: it cannot rearrange the blocks."""
    code, out, err = run_dus("plan", gemma3n, "--overlap", "2", "--mergekit-yaml")
    assert out == ""
    assert_refused(code, err, "its per-layer embeddings are rearranged block by block")
