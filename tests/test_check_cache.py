"""Remembered plan checks (dus/checks/cache.py): reused only for the same request and code."""

import json

import pytest

import dus.api
from dus.checks import cache as check_cache
from dus.checks import run as checks
from dus.errors import InputError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DUS_CHECK_CACHE", str(tmp_path / "checks"))
    return tmp_path / "checks"


def _forbid_checks(monkeypatch):
    def run(request):
        raise AssertionError("the checks ran again")

    monkeypatch.setattr(checks, "run", run)


def test_an_accepted_plan_is_answered_from_the_cache(llama_source, cache, monkeypatch):
    first = dus.api.plan(str(llama_source), overlap=1)
    assert len(list(cache.glob("*.json"))) == 1
    _forbid_checks(monkeypatch)
    again = dus.api.plan(str(llama_source), overlap=1)
    assert again.to_json() == first.to_json()
    with pytest.raises(AssertionError, match="ran again"):  # another plan is another request
        dus.api.plan(str(llama_source), overlap=0)


def test_the_accepted_differences_are_remembered_with_the_option_that_allowed_them(tmp_path, cache, monkeypatch):
    from test_equivalence import _save

    src = tmp_path / "src"
    _save("diffllama", src)
    real_run = checks.run
    allowed = dus.api.plan(str(src), overlap=1, allow_index_dependent=True).index_dependent
    assert allowed and all("computes it from the layer index" in d for d in allowed)
    _forbid_checks(monkeypatch)
    assert dus.api.plan(str(src), overlap=1, allow_index_dependent=True).index_dependent == allowed
    monkeypatch.setattr(checks, "run", real_run)
    with pytest.raises(InputError, match="computes it from the layer index"):  # not allowed: checked, refused
        dus.api.plan(str(src), overlap=1)


def test_a_refusal_is_not_remembered(llama_source, tmp_path, cache):
    src = tmp_path / "bad"
    src.mkdir()
    for f in llama_source.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "num_attention_heads": 5, "num_key_value_heads": 5}))
    for _ in range(2):
        with pytest.raises(InputError, match="transformers refuses this llama config"):
            dus.api.plan(str(src), overlap=1)
    assert not cache.exists() or not list(cache.glob("*.json"))


def test_the_key_covers_the_request_dus_and_the_libraries(monkeypatch):
    request = {"checks": [{"config": {"model_type": "llama"}, "where": "x"}], "layers": None}
    key = check_cache.request_key(request)
    assert check_cache.request_key(json.loads(json.dumps(request))) == key
    assert check_cache.request_key({**request, "layers": {"allow_index_dependent": True}}) != key
    monkeypatch.setattr(check_cache, "_installed", lambda name: f"{name} 99.0")
    assert check_cache.request_key(request) != key


def test_the_key_covers_every_dus_source_file(tmp_path, monkeypatch):
    package = tmp_path / "dus"
    (package / "plan").mkdir(parents=True)
    (package / "plan" / "checks.py").write_text("x = 1\n")
    monkeypatch.setattr(check_cache, "_PACKAGE", package)
    key = check_cache.request_key({})
    (package / "plan" / "checks.py").write_text("x = 2\n")
    assert check_cache.request_key({}) != key


@pytest.mark.parametrize(
    "entry",
    [
        b"{not json",
        b'{"key": "other", "accepted": []}',
        b'{"key": "K", "accepted": [1]}',
        b'{"key": "K", "accepted": [], "accepted": ["x"]}',
        b"[]",
    ],
)
def test_a_broken_or_foreign_entry_is_not_an_answer(cache, entry):
    cache.mkdir(parents=True)
    (cache / "K.json").write_bytes(entry)
    assert check_cache.lookup("K") is None
    check_cache.store("K", ["d"])
    assert check_cache.lookup("K") == ["d"]


def test_the_cache_lives_in_dus_cache_unless_named(tmp_path, monkeypatch):
    monkeypatch.delenv("DUS_CHECK_CACHE")
    monkeypatch.setenv("DUS_CACHE", str(tmp_path / "dus"))
    assert check_cache.cache_dir() == tmp_path / "dus" / "checks"


def test_an_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("DUS_CHECK_CACHE", str(tmp_path / "file" / "checks"))  # under a file: no folder possible
    check_cache.store("K", [])
    assert check_cache.lookup("K") is None


def test_verify_asks_what_the_build_asked(llama_source, tmp_path, cache, monkeypatch):
    """Verify repeats the build's request, so a build's accepted answer serves it, however the
    source was named (relative here, absolute in dus_plan.json)."""
    import shutil

    shutil.copytree(llama_source, tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    dus.api.build("src", "out", overlap=1)
    _forbid_checks(monkeypatch)
    report = dus.api.verify("out")
    assert "transformers accepts the configs and builds every weight and every layer as planned" in report.checks
    with pytest.raises(AssertionError, match="ran again"):
        dus.api.plan("src", overlap=1, allow_index_dependent=True)  # another request


def test_an_answer_no_longer_wanted_stops_the_child(llama_source, cache):
    import signal

    config = json.loads((llama_source / "config.json").read_text())
    pending = checks.PendingChecks({"checks": [{"config": config, "where": "a.json"}], "layers": None}, in_child=True)
    child = pending._child
    pending.cancel()
    assert child.returncode == -signal.SIGKILL
    assert not cache.exists() or not list(cache.glob("*.json"))  # no answer, nothing remembered


def test_an_editable_library_is_not_fingerprinted(monkeypatch, cache):
    """Its files are not in pip's RECORD, so edits would not change the key: nothing is remembered."""

    class Editable:
        version = "5.0.dev0"

        def read_text(self, name):
            return {
                "RECORD": "transformers/__init__.py,,\n",
                "direct_url.json": '{"url": "file:///src/transformers", "dir_info": {"editable": true}}',
            }.get(name)

    monkeypatch.setattr(check_cache.importlib.metadata, "distribution", lambda name: Editable())
    assert check_cache.request_key({}) is None
    check_cache.store(None, [])
    assert check_cache.lookup(None) is None and not cache.exists()


def test_a_killed_runs_temporary_entry_is_swept(cache):
    import os

    cache.mkdir(parents=True)
    stale, fresh = cache / ".K1.abc123", cache / ".K2.def456"  # as NamedTemporaryFile names them
    stale.write_text("{")
    fresh.write_text("{")  # another run may be writing it right now
    os.utime(stale, (0, 0))
    check_cache.store("K3", [])
    assert not stale.exists() and fresh.exists() and check_cache.lookup("K3") == []
