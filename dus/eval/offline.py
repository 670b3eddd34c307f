"""Which tasks need the Hugging Face Hub, and is it there? Asked before any model is loaded.

lm-eval's own tasks download their data on first use. Offline, datasets then
retries for about a minute per task and fails with a ConnectionError. So:
find every dataset a task reads (through groups and tags), keep those neither
local (a `json`/`csv`/... builder over files, or a directory) nor cached, and
if there are any, ask whether the Hub is reachable: HF_HUB_OFFLINE or
HF_DATASETS_OFFLINE set, or one TCP connection that fails within seconds.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from dus.errors import BuildError
from dus.read.source import is_repo_id

LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas"}
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
TRUE = {"1", "ON", "YES", "TRUE"}
DOCS = 'docs/pipeline/eval.md, "Offline evaluation"'
PROBE_SECONDS = 3.0


def hub_offline() -> str | None:
    """Why the Hub cannot be used, or None when it can."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in TRUE:
            return f"{name} is set"
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=PROBE_SECONDS).close()
    except OSError as e:
        return f"cannot reach {url.hostname}: {e.strerror or e.__class__.__name__}"
    return None


def dataset_paths(name: str, index: dict) -> set[str | None]:
    """The `dataset_path` of every task under a task, group or tag name (None: not stated, a Python task)."""
    entry = index.get(name)
    if entry is None:
        return {None}
    kind, cfg = entry.kind.name, entry.cfg or {}
    if kind == "TAG":
        children = sorted(entry.tags)
    elif kind == "GROUP":
        children = cfg.get("task", [])
        children = children if isinstance(children, list) else [children]
    else:
        return {cfg.get("dataset_path")}
    paths: set[str | None] = set()
    for child in children:
        if isinstance(child, dict) and "dataset_path" in child:  # an inline task config
            paths.add(child["dataset_path"])
        else:
            paths |= dataset_paths(child["task"] if isinstance(child, dict) else child, index)
    return paths


def is_local(dataset_path: str | None) -> bool:
    return dataset_path in LOCAL_BUILDERS or (dataset_path is not None and Path(dataset_path).expanduser().exists())


def cached(repo_id: str, kind: str = "dataset") -> bool:
    """A Hub repo in the Hugging Face cache (datasets also keep their own prepared copy)."""
    from huggingface_hub import constants

    if (Path(constants.HF_HUB_CACHE) / f"{kind}s--{repo_id.replace('/', '--')}").is_dir():
        return True
    if kind != "dataset":
        return False
    import datasets.config

    return (Path(datasets.config.HF_DATASETS_CACHE) / repo_id.replace("/", "___")).is_dir()


def check_hub(model: str, tasks: list[str], index: dict) -> None:
    """Offline, stop with one line when a task's data (or the model) is not cached; else use the cache only."""
    remote = {t: [p for p in dataset_paths(t, index) if not is_local(p)] for t in tasks}
    model_remote = not Path(model).expanduser().is_dir() and is_repo_id(model)
    if not any(remote.values()) and not model_remote:
        return  # all local: no need to ask the network
    reason = hub_offline()
    if reason is None:
        return
    missing = {
        t: [p or "a Python task's data" for p in paths if p is None or not cached(p)] for t, paths in remote.items()
    }
    missing = {t: paths for t, paths in missing.items() if paths}
    if missing:
        data = sorted({p for paths in missing.values() for p in paths})
        raise BuildError(
            f"the Hugging Face Hub is offline ({reason}) and task(s) {', '.join(missing)} need data from it "
            f"({', '.join(data)}, not cached); write local task YAMLs for them and pass --include-path DIR "
            f"(see {DOCS})"
        )
    if model_remote and not cached(model, "model"):
        raise BuildError(
            f"the Hugging Face Hub is offline ({reason}) and the model {model} is not cached; "
            "give a local model directory"
        )
    go_offline()


def go_offline() -> None:
    """Cached data only from here on: no per-file retries against an unreachable Hub."""
    import datasets.config
    from huggingface_hub import constants

    for name in OFFLINE_VARIABLES:
        os.environ[name] = "1"
    constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
