"""Bad input: one `error:` line, exit 2 (input) or 1 (run time), no traceback, no output left."""

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest
from refusal import assert_refused, snapshot


def _header(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _rewrite(path, header, data):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _first_tensor(header):
    return next(k for k in header if k != "__metadata__")


def truncated(src):
    path = src / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])


def corrupt_header(src):
    path = src / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[:8] + b"{not json" + raw[17:])


def header_past_end(src):
    path = src / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", len(raw) * 2) + raw[8:])


def overlapping_offsets(src):
    path = src / "model.safetensors"
    header, data = _header(path)
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    a, b = header[names[0]], header[names[1]]
    b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + b["data_offsets"][1] - b["data_offsets"][0]]
    _rewrite(path, header, data)


def offsets_past_file(src):
    path = src / "model.safetensors"
    header, data = _header(path)
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    begin, end = header[last]["data_offsets"]
    header[last]["data_offsets"] = [begin + 64, end + 64]
    _rewrite(path, header, data)


def unknown_dtype(src):
    path = src / "model.safetensors"
    header, data = _header(path)
    header[_first_tensor(header)]["dtype"] = "F13"
    _rewrite(path, header, data)


def weight_map_escapes(src):
    (src / "model.safetensors").rename(src.parent / "evil.safetensors")
    header, _ = _header(src.parent / "evil.safetensors")
    index = {"metadata": {}, "weight_map": {k: "../evil.safetensors" for k in header if k != "__metadata__"}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))


def no_config(src):
    (src / "config.json").unlink()


def pickle_only(src):
    (src / "model.safetensors").unlink()
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")


CORRUPTIONS = {
    "truncated": (truncated, "ends at byte"),
    "corrupt_header": (corrupt_header, "corrupt safetensors header"),
    "header_past_end": (header_past_end, "runs past the end"),
    "overlapping_offsets": (overlapping_offsets, "overlaps"),
    "offsets_past_file": (offsets_past_file, "gap"),
    "unknown_dtype": (unknown_dtype, "unknown dtype"),
    "weight_map_escapes": (weight_map_escapes, "outside the model directory"),
    "no_config": (no_config, "no config.json"),
    "pickle_only": (pickle_only, "refusing to unpickle"),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corrupt_source(name, llama_source, tmp_path, run_dus):
    src = tmp_path / "src"
    shutil.copytree(llama_source, src)
    corrupt, fragment = CORRUPTIONS[name]
    corrupt(src)
    before = snapshot(tmp_path)  # the source and, for one corruption, the shard it points out of it to
    code, out, err = run_dus("build", src, tmp_path / "out")
    assert_refused(code, err, fragment, outputs=tmp_path / "out", unchanged=(tmp_path, before))


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--overlap", "4"], "leaves nothing"),
        (["--overlap", "-1"], ">= 0"),
        (["--layers", "0:9"], "valid layers are 0..3"),
        (["--layers", "x"], "cannot parse"),
        (["--dtype", "int4", "--overlap", "1"], "unknown dtype"),
        (["--recipe", "magic", "--overlap", "1"], "unknown recipe"),
        (["--shard-size", "lots", "--overlap", "1"], "cannot parse size"),
        (["--preset", "nope", "--overlap", "1"], "unknown preset"),
        (["--no-such-option"], "No such option"),
    ],
)
def test_bad_plan_options(args, fragment, llama_source, tmp_path, run_dus):
    code, out, err = run_dus("build", llama_source, tmp_path / "out", *args)
    assert_refused(code, err, fragment, outputs=tmp_path / "out")


def test_missing_source_and_existing_output(llama_source, tmp_path, run_dus):
    code, _, err = run_dus("build", tmp_path / "nowhere", tmp_path / "out")
    assert_refused(code, err, "nowhere: does not exist", outputs=tmp_path / "out")
    (tmp_path / "out").mkdir()
    code, _, err = run_dus("build", llama_source, tmp_path / "out", "--overlap", "1")
    assert_refused(code, err, "already exists", unchanged=(tmp_path / "out", {}))
    code, _, err = run_dus("build", llama_source, tmp_path / "out", "--overlap", "1", "--force")
    assert code == 0, err
    assert (tmp_path / "out/model.safetensors").is_file()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_runtime_failure_leaves_nothing(llama_source, tmp_path, monkeypatch, run_dus):
    """A failure half-way through writing removes the staging directory."""
    import dus.write.shards as shards

    calls = {"n": 0}
    real = shards.copy_range

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(shards, "copy_range", failing)
    code, _, err = run_dus("build", llama_source, tmp_path / "out", "--overlap", "1")
    assert code == 130 and err.strip() == "error: interrupted"
    assert os.listdir(tmp_path) == []


def test_subprocess_error_has_no_traceback_and_debug_shows_it(tmp_path):
    cmd = [sys.executable, "-m", "dus", "plan", str(tmp_path / "missing")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'missing'}: does not exist"
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True)
    assert "Traceback" in debug.stderr and debug.returncode != 0


def test_sigterm_mid_build_leaves_nothing(tmp_path):
    """A build killed with SIGTERM removes its staging directory and leaves no OUTPUT."""
    import signal
    import time

    from dus.testing.synthetic import write_synthetic

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
    }
    write_synthetic(tmp_path / "src", config, "float32", shard_bytes=50 * 10**6)
    # A shard size of one tensor makes many small steps, so the signal lands mid-write.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dus",
            "build",
            str(tmp_path / "src"),
            str(tmp_path / "out"),
            "--layers",
            "0:8,0:8,0:8,0:8",
            "--shard-size",
            "1MB",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.dus-partial-*/*.safetensors")) and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip() == "error: interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_one_message_per_cause_in_every_command(tmp_path, llama_source, run_dus):
    """`not a model` in one wording per cause, whichever command reads the path (issue 25, item 7)."""
    missing, text, bare = tmp_path / "nonexistent", tmp_path / "notes.txt", tmp_path / "bare"
    text.write_text("notes")
    bare.mkdir()
    causes = {
        missing: f"{missing}: does not exist",
        text: f"{text}: is a file, not a model directory",
        bare: f"{bare}: has no config.json (not a Hugging Face model directory)",
    }
    for path, message in causes.items():
        for command in (
            ["verify", path],
            ["chat", path, "-p", "hi"],
            ["eval", path, "--perplexity", text],
            ["analyze", path, "--text", text],
            ["pretrain", path, "--data", text, "--output", tmp_path / "o"],
        ):
            code, _, err = run_dus(*command)
            assert (code, err.strip()) == (2, f"error: {message}"), (command, err)
    code, _, err = run_dus("verify", llama_source)
    assert (code, err.strip()) == (2, f"error: {llama_source}: has no dus_plan.json (not written by dus)")
    code, _, err = run_dus("plan", "nobody/nothing-here-xyz")
    assert code == 2 and "nobody/nothing-here-xyz" in err
