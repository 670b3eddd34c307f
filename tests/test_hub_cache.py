"""Hugging Face cache snapshots as sources, and symlinks that leave a model directory.

The cache is written by huggingface_hub itself: `hf_hub_download` fetches a tiny
model from a stdlib HTTP server on 127.0.0.1, so snapshots hold what real ones
hold (relative symlinks ../../blobs/<sha256>, refs/main). dus then reads it
offline, by snapshot path and by repo id.
"""

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
from huggingface_hub import constants, hf_hub_download, scan_cache_dir
from models import save_model
from refusal import assert_refused

REPO = "dus-test/tiny-llama"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
SHARD_SIZE = "20KB"  # the tiny llama is ~75 KB: several shards


def _serve(directory):
    """An HTTP server answering HEAD/GET /{org}/{name}/resolve/{rev}/{file} the way the Hub does."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _headers(self):
            parts = self.path.split("/", 5)
            path = directory / parts[5] if len(parts) == 6 and parts[3] == "resolve" else None
            if path is None or not path.is_file():
                self.send_response(404)
                self.end_headers()
                return None
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return data

        def do_HEAD(self):
            self._headers()

        def do_GET(self):
            data = self._headers()
            if data is not None:
                self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _cache_model(tmp_path, monkeypatch, sharded: bool):
    """A tiny llama downloaded into tmp_path/hub by huggingface_hub; returns its snapshot path.
    Afterwards the process is offline with HF_HOME and HF_HUB_CACHE inside tmp_path."""
    model = tmp_path / "served"
    save_model("llama", model, max_shard_size=SHARD_SIZE if sharded else None)
    (model / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))
    hub = tmp_path / "hub"
    server = _serve(model)
    try:
        with monkeypatch.context() as online:
            online.setattr(constants, "HF_HUB_OFFLINE", False)
            online.setenv("NO_PROXY", "127.0.0.1")
            for f in sorted(model.iterdir()):
                snapshot_file = hf_hub_download(
                    REPO, f.name, cache_dir=hub, endpoint=f"http://127.0.0.1:{server.server_port}"
                )
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # constants are read at import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    return os.path.dirname(snapshot_file)


@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "single"])
@pytest.mark.parametrize("by", ["snapshot", "repo_id"])
def test_plan_build_verify_from_cache(tmp_path, monkeypatch, run_dus, sharded, by):
    snapshot = _cache_model(tmp_path, monkeypatch, sharded)
    # huggingface_hub recognises what it wrote: files are links into its blobs/.
    (repo,) = scan_cache_dir(tmp_path / "hub").repos
    (revision,) = repo.revisions
    assert revision.commit_hash == COMMIT and str(revision.snapshot_path) == snapshot
    weights = sorted(f.file_name for f in revision.files if f.file_name.endswith(".safetensors"))
    assert len(weights) >= 3 if sharded else weights == ["model.safetensors"]
    assert all(os.readlink(f.file_path).startswith("../../blobs/") for f in revision.files)

    source = snapshot if by == "snapshot" else REPO
    code, out, err = run_dus("plan", source, "--overlap", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["num_layers"] == 6
    code, out, err = run_dus("build", source, tmp_path / "out", "--overlap", "1")
    assert code == 0, err
    assert (tmp_path / "out/tokenizer_config.json").read_text() == json.dumps({"model_max_length": 128})
    record = json.loads((tmp_path / "out/dus_plan.json").read_text())["sources"]["base"]
    assert (record["ref"], record["revision"]) == ((snapshot, None) if by == "snapshot" else (REPO, COMMIT))
    code, out, err = run_dus("verify", tmp_path / "out")
    assert code == 0, err
    assert out.startswith(f"verified {tmp_path / 'out'}")


def test_verify_reads_the_revision_the_build_recorded(tmp_path, monkeypatch, run_dus):
    """The repo moves on after the build (a new commit on main, other weights): verify still reads the
    commit dus_plan.json records, and a missing recorded commit is one error line, not another snapshot."""
    snapshot = _cache_model(tmp_path, monkeypatch, sharded=False)
    code, _, err = run_dus("build", REPO, tmp_path / "out", "--overlap", "1")
    assert code == 0, err
    repo = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}"
    newer = repo / "snapshots" / ("f" * 40)
    shutil.copytree(snapshot, newer)  # links followed: plain files inside the repo's cache folder
    weights = bytearray((newer / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF  # the last byte of the last tensor changed upstream
    (newer / "model.safetensors").unlink()
    (newer / "model.safetensors").write_bytes(weights)
    (repo / "refs" / "main").write_text("f" * 40)
    code, out, err = run_dus("verify", tmp_path / "out")
    assert code == 0, err
    assert out.startswith(f"verified {tmp_path / 'out'}")

    code, _, err = run_dus("build", REPO, tmp_path / "out2", "--overlap", "1")  # the new main, recorded as such
    assert code == 0, err
    assert json.loads((tmp_path / "out2/dus_plan.json").read_text())["sources"]["base"]["revision"] == "f" * 40
    shutil.rmtree(repo / "snapshots" / COMMIT)
    code, _, err = run_dus("verify", tmp_path / "out")
    assert_refused(code, err, REPO, f"at revision {COMMIT}")


@pytest.mark.slow  # ~14 s
def test_repo_id_from_environment_alone(tmp_path, monkeypatch):
    """A fresh process finds the cache through HF_HUB_CACHE / HF_HUB_OFFLINE only."""
    _cache_model(tmp_path, monkeypatch, sharded=True)
    result = subprocess.run(
        [sys.executable, "-m", "dus", "build", REPO, str(tmp_path / "out"), "--overlap", "1", "--verify"],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout + result.stderr


@pytest.mark.parametrize("name", ["model-00001", "config.json", "tokenizer_config.json"])
def test_snapshot_link_leaving_its_repo_cache_is_refused(tmp_path, monkeypatch, run_dus, capsys, name):
    snapshot = _cache_model(tmp_path, monkeypatch, sharded=True)
    link = next(p for p in sorted(os.listdir(snapshot)) if p.startswith(name))
    # Another repo's blob: inside the Hub cache, outside this repo's folder.
    other = tmp_path / "hub/models--someone--else/blobs"
    other.mkdir(parents=True)
    target = other / ("0" * 64)
    target.write_bytes(open(os.path.join(snapshot, link), "rb").read())
    os.remove(os.path.join(snapshot, link))
    os.symlink(os.path.relpath(target, snapshot), os.path.join(snapshot, link))
    capsys.readouterr()  # progress bars of the set-up
    for source in (snapshot, REPO):
        code, out, err = run_dus("build", source, tmp_path / "out", "--overlap", "1")
        assert_refused(code, err, link, "outside the model directory", outputs=tmp_path / "out")


def _plain_model(tmp_path, capsys):
    model = tmp_path / "model"
    save_model("llama", model)
    capsys.readouterr()  # its progress bar
    return model


@pytest.mark.parametrize("name", ["tokenizer.json", "model.safetensors", "config.json"])
def test_link_out_of_a_model_directory_is_refused(tmp_path, run_dus, capsys, name):
    model = _plain_model(tmp_path, capsys)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    secret = outside / name
    secret.write_bytes((model / name).read_bytes() if (model / name).exists() else b"{}")
    (model / name).unlink(missing_ok=True)
    (model / name).symlink_to(secret)
    code, out, err = run_dus("build", model, tmp_path / "out", "--overlap", "1")
    assert_refused(code, err, f"{model / name}:", "outside the model directory", outputs=tmp_path / "out")


def test_link_to_a_file_inside_the_directory_is_followed(tmp_path, run_dus, capsys):
    model = _plain_model(tmp_path, capsys)
    (model / "files").mkdir()
    (model / "model.safetensors").rename(model / "files/weights.safetensors")
    (model / "model.safetensors").symlink_to("files/weights.safetensors")
    (model / "files/tok.json").write_text('{"version": "1.0"}')
    (model / "tokenizer.json").symlink_to(model / "files/tok.json")  # absolute, still inside
    code, out, err = run_dus("build", model, tmp_path / "out", "--overlap", "1", "--verify")
    assert code == 0, err
    assert (tmp_path / "out/tokenizer.json").read_text() == '{"version": "1.0"}'
    assert not (tmp_path / "out/tokenizer.json").is_symlink()
