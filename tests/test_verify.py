"""dus verify: passes on a build, fails naming the first mismatch."""

import hashlib
import json
from pathlib import Path

import pytest
from models import save_model
from refusal import assert_refused

import dus.api
from dus.core.digest import DIGESTS


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    save_model("qwen2", root / "src")
    dus.api.build(str(root / "src"), root / "out", overlap=1, shard_size="60KB")
    return root


@pytest.fixture(scope="module")
def built_both(built):
    """The same build twice: BLAKE3 (the default) in out/, SHA-256 (--file-sha256) in out-sha256/."""
    dus.api.build(str(built / "src"), built / "out-sha256", overlap=1, shard_size="60KB", file_sha256=True)
    return built


def _copy(built, tmp_path, name="out"):
    import shutil

    shutil.copytree(built / name, tmp_path / "out")
    return tmp_path / "out"


def _rehash(out, shard) -> None:
    """Record the shard's digest as it is now on disk, in the kind dus_plan.json holds."""
    record = json.loads((out / "dus_plan.json").read_text())
    entry = record["output"]["shards"][shard.name]
    for kind in set(entry) & set(DIGESTS):
        entry[kind] = DIGESTS[kind](shard.read_bytes()).hexdigest()
    (out / "dus_plan.json").write_text(json.dumps(record))


def test_verify_passes(built, run_dus):
    code, out, err = run_dus("verify", built / "out")
    assert code == 0, err
    assert "shard blake3 match" in out and "bytes of all tensors match" in out and "config.json as planned" in out


@pytest.mark.parametrize("kind", ["blake3", "sha256"])
@pytest.mark.parametrize("shard_index", [0, 1, -1])
def test_flipped_byte_in_any_shard(built_both, tmp_path, shard_index, kind, run_dus):
    out = _copy(built_both, tmp_path, "out" if kind == "blake3" else "out-sha256")
    shard = sorted(out.glob("*.safetensors"))[shard_index]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    code, _, err = run_dus("verify", out)
    assert code == 1
    assert err.startswith(f"error: verification failed: {shard.name}: {kind} ")


@pytest.mark.parametrize("kind", ["blake3", "sha256"])
@pytest.mark.parametrize("where", ["header", "last-byte"])
def test_flipped_byte_outside_a_compared_tensor(built_both, tmp_path, where, kind, run_dus):
    """Bytes no other check reads are hashed too: the header's metadata ("pt" -> "qt")."""
    out = _copy(built_both, tmp_path, "out" if kind == "blake3" else "out-sha256")
    shard = sorted(out.glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[data.index(b'"pt"') + 1 if where == "header" else -1] ^= 0x01
    shard.write_bytes(bytes(data))
    code, _, err = run_dus("verify", out)
    assert code == 1 and err.startswith(f"error: verification failed: {shard.name}: {kind} ")


def test_a_file_sha256_build_verifies(built_both, run_dus):
    code, text, err = run_dus("verify", built_both / "out-sha256")
    assert code == 0 and "shard sha256 match" in text, err


def test_an_old_sha256_only_record_verifies(built, tmp_path, run_dus):
    """dus_plan.json written before BLAKE3: {"sha256", "bytes"} per shard."""
    out = _copy(built, tmp_path)
    record = json.loads((out / "dus_plan.json").read_text())
    record["output"]["shards"] = {
        name: {"sha256": hashlib.sha256((out / name).read_bytes()).hexdigest(), "bytes": entry["bytes"]}
        for name, entry in record["output"]["shards"].items()
    }
    (out / "dus_plan.json").write_text(json.dumps(record, indent=2))
    code, text, err = run_dus("verify", out)
    assert code == 0 and "shard sha256 match" in text, err
    shard = sorted(out.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-1] + b"?")
    code, _, err = run_dus("verify", out)
    assert code == 1 and f"{shard.name}: sha256 " in err


@pytest.mark.parametrize("entry", [{"bytes": 1}, {"blake3": "00", "sha256": "00", "bytes": 1}], ids=["none", "both"])
def test_a_record_without_one_digest_kind_fails(built, tmp_path, entry, run_dus):
    out = _copy(built, tmp_path)
    record = json.loads((out / "dus_plan.json").read_text())
    name = sorted(record["output"]["shards"])[0]
    record["output"]["shards"][name] = entry
    (out / "dus_plan.json").write_text(json.dumps(record))
    code, _, err = run_dus("verify", out)
    assert code == 1 and "must record one digest kind (blake3 or sha256)" in err and "Traceback" not in err


def test_flipped_byte_with_rewritten_hash_is_still_caught(built, tmp_path, run_dus):
    """Even if someone updates dus_plan.json's hash, the bytes are compared with the source."""
    out = _copy(built, tmp_path)
    shard = sorted(out.glob("*.safetensors"))[1]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x10
    shard.write_bytes(bytes(data))
    _rehash(out, shard)
    code, _, err = run_dus("verify", out)
    assert code == 1 and "bytes differ from its planned source" in err


def test_missing_tensor(built, tmp_path, run_dus):
    from safetensors.torch import load_file, save_file

    out = _copy(built, tmp_path)
    shard = sorted(out.glob("*.safetensors"))[0]
    tensors = load_file(shard)
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, shard, metadata={"format": "pt"})
    index = json.loads((out / "model.safetensors.index.json").read_text())
    del index["weight_map"][dropped]
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    _rehash(out, shard)
    code, _, err = run_dus("verify", out)
    assert code == 1 and f"{dropped!r} is missing" in err


def test_edited_config(built, tmp_path, run_dus):
    out = _copy(built, tmp_path)
    config = json.loads((out / "config.json").read_text())
    config["layer_types"][3] = "sliding_attention" if config["layer_types"][3] == "full_attention" else "full_attention"
    (out / "config.json").write_text(json.dumps(config))
    code, _, err = run_dus("verify", out)
    assert code == 1 and "config.json field 'layer_types'" in err


def test_source_moved(built, tmp_path, run_dus):
    import shutil

    out = _copy(built, tmp_path)
    shutil.copytree(built / "src", tmp_path / "moved")
    record = json.loads((out / "dus_plan.json").read_text())
    record["sources"]["base"]["ref"] = str(tmp_path / "gone")
    (out / "dus_plan.json").write_text(json.dumps(record))
    code, _, err = run_dus("verify", out)
    assert code == 2 and f"{tmp_path / 'gone'}: does not exist" in err, err
    code, out_text, err = run_dus("verify", out, "--source", tmp_path / "moved")
    assert code == 0, err


def test_build_verify_flag(built, tmp_path, run_dus, monkeypatch):
    """--verify proves the output it just wrote: a byte changed between the build and the check fails it."""
    code, out, err = run_dus("build", built / "src", tmp_path / "v", "--layers", "0:4,3", "--verify")
    assert code == 0, err
    assert f"verified {tmp_path / 'v'}: " in out and "tensor names, dtypes and shapes match" in out
    real = dus.api.verify

    def flip_a_byte_then_verify(output, source=None):
        shard = Path(output) / "model.safetensors"
        data = bytearray(shard.read_bytes())
        data[-1] ^= 1  # the last byte of the last tensor
        shard.write_bytes(data)
        return real(output, source)

    monkeypatch.setattr(dus.api, "verify", flip_a_byte_then_verify)
    code, out, err = run_dus("build", built / "src", tmp_path / "w", "--layers", "0:4,3", "--verify")
    assert_refused(code, err, "verification failed", exit_code=1)


def test_flipped_byte_in_a_computed_tensor(tmp_path, run_dus):
    """Blended and scaled tensors are recomputed from the source and compared too."""
    import yaml

    from dus.read.safetensors import read_header

    save_model("llama", tmp_path / "src")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "source": str(tmp_path / "src"),
                "layers": [{"range": [0, 4]}, {"layer": 3, "scale": {"modules": ["mlp.down_proj"], "factor": 0.5}}],
            }
        )
    )
    dus.api.build(None, tmp_path / "out", config=str(recipe))
    shard = tmp_path / "out" / "model.safetensors"
    target = read_header(str(shard))[0]["model.layers.4.mlp.down_proj.weight"]
    data = bytearray(shard.read_bytes())
    data[target.start + 1] ^= 0x01
    shard.write_bytes(bytes(data))
    _rehash(tmp_path / "out", shard)
    code, _, err = run_dus("verify", tmp_path / "out")
    assert code == 1 and "'model.layers.4.mlp.down_proj.weight' bytes differ" in err


def test_index_pointing_at_an_unlisted_file(built, tmp_path, run_dus):
    """A weight map redirected to a copy in a subdirectory is not the shard that was hashed."""
    import shutil

    out = _copy(built, tmp_path)
    shard = sorted(out.glob("*.safetensors"))[0]
    (out / "sub").mkdir()
    shutil.copy(shard, out / "sub" / shard.name)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: (f"sub/{v}" if v == shard.name else v) for k, v in index["weight_map"].items()}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    code, _, err = run_dus("verify", out)
    assert code == 1 and "not in a shard dus_plan.json lists" in err and "Traceback" not in err
