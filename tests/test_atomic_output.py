"""OUTPUT is whole or absent through kills, races and full disks; one build per OUTPUT; dead builds' leftovers go.

Kills are real: a `python -m dus`-like subprocess sends itself SIGKILL at a
named publishing step (`dus.core.publish.on_step`), the worst instants.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from refusal import assert_refused

import dus.core.publish as output

OLD, NEW = ["--overlap", "1"], ["--overlap", "0"]  # 6 and 8 output layers: tells the two models apart

# Runs `dus ARGS...`, stopping at STEP: "kill" sends itself SIGKILL, "hold" creates WAIT/ready and waits
# for WAIT/go. With "rename", the file system is taken to lack renameat2, so --force uses two renames.
HARNESS = """
import os, signal, sys, time
import dus.core.publish as output
step, action, rename, wait = sys.argv[1:5]
if rename == "rename":
    output._renameat2 = None
def stop(name):
    if name != step:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    open(os.path.join(wait, "ready"), "w").close()
    while not os.path.exists(os.path.join(wait, "go")):
        time.sleep(0.01)
output.on_step = stop
from dus.cli import main
main(sys.argv[5:])
"""


@pytest.fixture
def parent(tmp_path):
    """The directory builds write into: it holds nothing but what the test makes there."""
    (tmp_path / "models").mkdir()
    return tmp_path / "models"


def start(step, action, *args, rename=False, wait=None) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-c",
        HARNESS,
        step,
        action,
        "rename" if rename else "exchange",
        str(wait or "."),
        *map(str, args),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def layers(model: Path) -> int:
    return json.loads((model / "dus_plan.json").read_text())["output"]["num_layers"]


def hidden(directory: Path) -> list[str]:
    return sorted(p for p in os.listdir(directory) if p.startswith("."))


def one_error_line(code, err, expected_code) -> str:
    return assert_refused(code, err, exit_code=expected_code)


def exchange_supported(directory: Path) -> bool:
    (directory / "a").mkdir()
    (directory / "b").mkdir()
    try:
        return output._rename2(directory / "a", directory / "b", output.RENAME_EXCHANGE)
    finally:
        os.rmdir(directory / "a")
        os.rmdir(directory / "b")


@pytest.mark.parametrize(
    "mode, step, survivor",
    [
        ("exchange", "publishing", "old"),
        ("exchange", "exchanged", "new"),  # swapped: the old model waits at the staging name to be removed
        ("rename", "publishing", "old"),
        ("rename", "old-hidden", "old"),  # between the two renames: OUTPUT is missing until the next run
    ],
)
def test_force_killed_mid_swap_leaves_a_whole_output(mode, step, survivor, llama_source, parent, run_dus):
    out = parent / "out"
    if mode == "exchange" and not exchange_supported(parent):
        pytest.skip("this file system has no RENAME_EXCHANGE")
    assert run_dus("build", llama_source, out, *OLD)[0] == 0
    proc = start(step, "kill", "build", llama_source, out, *NEW, "--force", rename=mode == "rename")
    proc.communicate(timeout=120)
    assert proc.returncode == -9
    if step == "old-hidden":
        assert not out.exists() and hidden(parent) == [
            ".out.dus-lock",
            f".out.dus-old-{proc.pid}",
            f".out.dus-partial-{proc.pid}",
        ]
    else:
        assert run_dus("verify", out)[0] == 0  # whole before any recovery
    code, _, err = run_dus("build", llama_source, parent / "next", *OLD)  # the next build into the parent recovers
    assert code == 0, err
    if step == "old-hidden":
        assert f"dus: restored out from .out.dus-old-{proc.pid}, left by a run killed while replacing it" in err
    assert f"dus: removed stale .out.dus-partial-{proc.pid} left by a dead run" in err
    assert run_dus("verify", out)[0] == 0
    assert layers(out) == (6 if survivor == "old" else 8)
    assert hidden(parent) == []


@pytest.mark.parametrize("mode", ["exchange", "rename"])
def test_force_replaces_and_leaves_nothing_else(mode, llama_source, parent, run_dus, monkeypatch):
    if mode == "rename":
        monkeypatch.setattr(output, "_renameat2", None)
    steps = []
    monkeypatch.setattr(output, "on_step", steps.append)
    out = parent / "out"
    assert run_dus("build", llama_source, out, *OLD)[0] == 0
    code, _, err = run_dus("build", llama_source, out, *NEW, "--force")
    assert code == 0, err
    assert layers(out) == 8 and run_dus("verify", out)[0] == 0
    assert steps[-1] == ("old-hidden" if mode == "rename" or not exchange_supported(parent) else "exchanged")
    assert os.listdir(parent) == ["out"]


def test_concurrent_build_fails_at_once_and_the_first_wins(llama_source, parent, tmp_path, run_dus):
    out = parent / "out"
    first = start("publishing", "hold", "build", llama_source, out, *OLD, wait=tmp_path)
    deadline = time.time() + 120
    while not (tmp_path / "ready").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert (tmp_path / "ready").exists(), first.communicate(timeout=60)
    try:
        for force in ([], ["--force"]):
            code, _, err = run_dus("build", llama_source, out, *NEW, *force)
            expected = (
                f"error: {out} is being written by another dus process (pid {first.pid}); "
                "wait for it to finish or choose another output"
            )
            assert one_error_line(code, err, 1) == expected
    finally:
        (tmp_path / "go").touch()
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert layers(out) == 6 and run_dus("verify", out)[0] == 0
    assert os.listdir(parent) == ["out"]  # the lock file goes with the build that held it


def test_output_that_appears_during_a_build_is_not_replaced(llama_source, parent, run_dus, monkeypatch):
    out = parent / "out"

    def someone_else(step):
        if step == "publishing":
            (out / "theirs").mkdir(parents=True)

    monkeypatch.setattr(output, "on_step", someone_else)
    code, _, err = run_dus("build", llama_source, out, *OLD)
    line = one_error_line(code, err, 1)
    assert line == f"error: {out} appeared during the build; not replacing what this build did not check"
    assert os.listdir(out) == ["theirs"] and os.listdir(parent) == ["out"]


def test_force_replaces_only_the_output_it_checked(llama_source, parent, run_dus, monkeypatch):
    out = parent / "out"
    assert run_dus("build", llama_source, out, *OLD)[0] == 0

    def someone_else(step):
        if step == "publishing":
            out.rename(parent / "moved")
            (out / "theirs").mkdir(parents=True)

    monkeypatch.setattr(output, "on_step", someone_else)
    code, _, err = run_dus("build", llama_source, out, *NEW, "--force")
    assert one_error_line(code, err, 1) == (
        f"error: {out} changed during the build; not replacing what this build did not check"
    )
    assert os.listdir(out) == ["theirs"] and sorted(os.listdir(parent)) == ["moved", "out"]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its PID names no process
    return child.pid


def test_dead_builds_leftovers_are_removed_by_the_next_build(llama_source, parent, run_dus):
    dead, live = dead_pid(), os.getpid()
    made = {
        f".out.dus-partial-{dead}": "removed",
        f".gone.dus-old-{dead}": "removed",  # `gone` exists: the swap finished, the old one was not yet removed
        f".kept.dus-old-{dead}": "restored",  # `kept` is missing: the swap was cut between its renames
        f".live.dus-partial-{live}": "kept",  # a live PID
        f".held.dus-partial-{dead}": "kept",  # a dead PID, but `held`'s lock is held: a build is running
        f".out.dus-partial-{dead}x": "kept",  # not our pattern
        f"out.dus-partial-{dead}": "kept",
    }
    for name in made:
        (parent / name).mkdir()
        (parent / name / "model.safetensors").write_bytes(b"x")
    (parent / "gone").mkdir()
    (parent / ".orphan.dus-lock").touch()  # a killed build's lock file: nobody holds it, it goes silently
    lock = os.open(parent / ".held.dus-lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dus", "build", str(llama_source), str(parent / "out"), *OLD],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.close(lock)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stderr.splitlines()) == sorted(
        [
            f"dus: removed stale .gone.dus-old-{dead} left by a dead run",
            f"dus: removed stale .out.dus-partial-{dead} left by a dead run",
            f"dus: restored kept from .kept.dus-old-{dead}, left by a run killed while replacing it",
        ]
    )
    expected = {name for name, fate in made.items() if fate == "kept"} | {"out", "gone", "kept", ".held.dus-lock"}
    assert set(os.listdir(parent)) == expected
    assert (parent / "kept" / "model.safetensors").read_bytes() == b"x"


def test_the_lock_is_exclusive_and_goes_when_released(tmp_path):
    with output.output_lock(tmp_path, "out"):
        assert (tmp_path / ".out.dus-lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(output.BuildError, match=rf"\(pid {os.getpid()}\)"):
            with output.output_lock(tmp_path, "out"):
                pass
    assert os.listdir(tmp_path) == []


EXPORT = """
import os, signal, sys
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
from dus.train.loop import export_hf
model_dir, out = sys.argv[1:3]
def kill(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
type(tokenizer).save_pretrained = kill  # the weights are written, the tokenizer not yet
export_hf(AutoModelForCausalLM.from_pretrained(model_dir).state_dict(), model_dir, Path(out), tokenizer)
"""


@pytest.mark.slow  # a subprocess that imports torch and transformers
def test_export_killed_midway_leaves_no_model(tiny_model, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dus.train.loop import export_hf

    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")  # a run directory holds more than the model
    proc = subprocess.Popen(
        [sys.executable, "-c", EXPORT, str(tiny_model), str(out)], stderr=subprocess.PIPE, text=True
    )
    assert proc.communicate(timeout=300) and proc.returncode == -9, proc.stderr
    assert not any((out / name).exists() for name in output.WEIGHTS_ENTRIES)  # nothing loads as a model
    export_hf(
        AutoModelForCausalLM.from_pretrained(tiny_model).state_dict(),
        str(tiny_model),
        out,
        AutoTokenizer.from_pretrained(tiny_model),
    )
    assert f"dus: removed stale .model.dus-partial-{proc.pid} left by a dead run" in capsys.readouterr().err
    assert hidden(out) == [] and {"metrics.jsonl", "tokenizer.json", "config.json"} <= set(os.listdir(out))
    assert AutoModelForCausalLM.from_pretrained(out) and AutoTokenizer.from_pretrained(out)


# Publishes config.json, tokenizer.json and model.safetensors holding the text NEW, killed after STEP.
MOVE = """
import os, signal, sys
from pathlib import Path
import dus.core.publish as output
out, step = Path(sys.argv[1]), sys.argv[2]
output.on_step = lambda name: os.kill(os.getpid(), signal.SIGKILL) if name == step else None
with output.atomic_model_files(out) as staging:
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (staging / name).write_text("new")
"""


@pytest.mark.parametrize("step", ["publishing", "moved config.json", "moved tokenizer.json"])
def test_model_files_killed_while_moving_in_leave_no_mixed_model(step, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors", "metrics.jsonl"):
        (out / name).write_text("old")  # an earlier export, and the run's own files
    proc = subprocess.Popen([sys.executable, "-c", MOVE, str(out), step], stderr=subprocess.PIPE, text=True)
    assert proc.communicate(timeout=120) and proc.returncode == -9, proc.stderr
    weights = out / "model.safetensors"
    assert weights.read_text() == "old" if step == "publishing" else not weights.exists()
    with output.atomic_model_files(out) as staging:
        for name in ("config.json", "tokenizer.json", "model.safetensors"):
            (staging / name).write_text("new")
    assert f"dus: removed stale .model.dus-partial-{proc.pid} left by a dead run" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        "config.json": "new",
        "tokenizer.json": "new",
        "model.safetensors": "new",
        "metrics.jsonl": "old",
    }


@pytest.mark.parametrize(
    "call, code", [("copy_file_range", errno.ENOSPC), ("write", errno.EDQUOT), ("copy_file_range", errno.EFBIG)]
)
def test_disk_full_names_the_file_and_leaves_nothing(call, code, llama_source, parent, run_dus, monkeypatch):
    """The write of the second shard fails as a full disk would make it."""
    real = getattr(os, call)

    def full(*args):
        target = args[1] if call == "copy_file_range" else args[0]
        if "model-00002-of-" in os.readlink(f"/proc/self/fd/{target}"):
            raise OSError(code, os.strerror(code))
        return real(*args)

    monkeypatch.setattr(output, "free_bytes", lambda directory: 4096)  # what the message reports as free
    monkeypatch.setattr(os, call, full)
    monkeypatch.setattr("dus.write.build.require_space", lambda directory, needed: None)
    result = run_dus("build", llama_source, parent / "out", *OLD, "--shard-size", "40KB")
    monkeypatch.undo()
    line = one_error_line(result[0], result[2], 1)
    reason = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large"}[code]
    match = re.fullmatch(
        rf"error: {reason} writing model-00002-of-0000\d\.safetensors in {re.escape(str(parent))}: "
        r"needs ([\d,]+) bytes more, 4,096 bytes free(; try a smaller --shard-size)?",
        line,
    )
    assert match, line
    assert 40_000 < int(match[1].replace(",", "")) and bool(match[2]) == (code == errno.EFBIG)
    assert os.listdir(parent) == []


def test_a_model_that_cannot_fit_is_refused_before_writing(llama_source, parent, run_dus, monkeypatch):
    asked = []
    monkeypatch.setattr(output, "free_bytes", lambda directory: asked.append(Path(directory)) or 1000)
    code, out, err = run_dus("build", llama_source, parent / "out", *OLD)
    planned = json.loads(run_dus("plan", llama_source, *OLD, "--json")[1])["output_bytes"]
    line = one_error_line(code, err, 1)
    assert re.fullmatch(
        rf"error: not enough space in {re.escape(str(parent))}: the model needs ([\d,]+) bytes, "
        r"1,000 free",
        line,
    )
    assert int(re.search(r"needs ([\d,]+)", line)[1].replace(",", "")) >= planned
    assert asked == [parent] and os.listdir(parent) == []


def test_disk_full_after_the_shards_names_the_directory(llama_source, parent, run_dus, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(output, "free_bytes", lambda directory: 0)
    monkeypatch.setattr("dus.write.build.require_space", lambda directory, needed: None)
    monkeypatch.setattr("dus.write.build.shutil.copyfile", full)  # generation_config.json, a side file
    code, _, err = run_dus("build", llama_source, parent / "out", *OLD)
    assert one_error_line(code, err, 1) == f"error: no space left writing in {parent}: 0 bytes free"
    assert os.listdir(parent) == []


def test_a_file_system_without_locks_builds_unlocked(llama_source, parent, run_dus, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    code, _, err = run_dus("build", llama_source, parent / "out", *OLD)
    assert code == 0, err
    assert os.listdir(parent) == ["out"] and run_dus("verify", parent / "out")[0] == 0


@pytest.fixture
def umask():
    """Set the process umask for one test, then put the old one back."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_a_build_follows_the_umask_like_an_ordinary_file(
    mask, file_mode, dir_mode, llama_source, parent, run_dus, umask
):
    umask(mask)
    out = parent / "out"
    assert run_dus("build", llama_source, out, *OLD)[0] == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == dir_mode
    modes = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in out.iterdir()}
    assert "model.safetensors" in modes and "dus_plan.json" in modes
    assert modes == dict.fromkeys(modes, file_mode)


def test_model_files_written_0600_are_published_by_the_umask(tmp_path, umask):
    """safetensors' save_file (what save_pretrained calls, so `dus pretrain`'s export) creates files 0600."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    umask(0o022)
    with output.atomic_model_files(tmp_path / "run") as staging:
        save_file({"w": torch.zeros(2)}, staging / "model.safetensors")
        assert stat.S_IMODE(os.stat(staging / "model.safetensors").st_mode) == 0o600  # what is being fixed
    assert stat.S_IMODE(os.stat(tmp_path / "run" / "model.safetensors").st_mode) == 0o644


def test_atomic_write_text_replaces_whole_and_follows_the_umask(tmp_path, umask, monkeypatch):
    umask(0o027)
    path = tmp_path / "results.json"
    output.atomic_write_text(path, "old\n")
    assert path.read_text() == "old\n" and stat.S_IMODE(os.stat(path).st_mode) == 0o640

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        output.atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["results.json"]  # no temporary file left
