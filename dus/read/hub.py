"""The Hugging Face Hub, for sources given as repo ids (dus/read/source.py).

`dus plan` reads remote safetensors headers (no weights); `dus build` downloads
the needed files into the Hugging Face cache. HF_HUB_OFFLINE is honoured by
huggingface_hub itself: offline, cached files are used.
"""

from __future__ import annotations

from pathlib import Path

from dus.errors import InputError
from dus.read.safetensors import TensorInfo


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def download(repo_id: str, patterns: list[str], revision: str | None = None) -> Path:
    """The snapshot of `revision` (a commit, branch or tag; None: main) holding the files `patterns` match."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, revision=revision))
    except (RepositoryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        at = f" at revision {revision}" if revision else ""
        raise InputError(
            f"{repo_id}: cannot get it{at} from the Hugging Face Hub or its cache ({e.__class__.__name__})"
        ) from e


def remote_tensors(repo_id: str, revision: str) -> dict[str, TensorInfo]:
    from huggingface_hub import get_safetensors_metadata

    try:
        metadata = get_safetensors_metadata(repo_id, revision=revision)
    except Exception as e:  # any Hub failure is a one-line error for the user
        raise InputError(f"{repo_id}: cannot read its safetensors headers ({e.__class__.__name__})") from e
    tensors = {}
    for filename, file_meta in metadata.files_metadata.items():
        for name, t in file_meta.tensors.items():
            start, end = t.data_offsets
            tensors[name] = TensorInfo(filename, t.dtype, tuple(t.shape), start, end)
    return tensors
