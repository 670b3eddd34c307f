"""Sharded checkpoints with torch.distributed.checkpoint (DCP), read back as untrusted input.

OUTPUT/checkpoints/step_00000100/ holds each rank's shards of the model and
optimizer (DCP's `__R_I.distcp` files and its `.metadata`), the shared trainer
state (step, tokens, scheduler) and, under a key per rank, that rank's data
position and RNG states; both are JSON strings, so they load as plain data.
Once every rank has saved, rank 0 writes `dus_checkpoint.json` (the step, every
file's size and sha256) by an atomic rename: it marks the checkpoint complete,
and a directory without it is an interrupted save and is ignored.

Resuming checks every file against that record before any byte is loaded.
Pickle is still torch's own format for `.metadata` and inside its `torch.save`
items: `.metadata` goes through an unpickler that admits only DCP's metadata
classes, every item through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import random
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from dus.core.digest import file_digests
from dus.core.publish import atomic_write_text, follow_umask
from dus.errors import InputError
from dus.private_api import DCP_STORAGE_INFO, dcp_flatten, dcp_set_element, dcp_storage_info
from dus.train.parallel import Dist, barrier, broadcast_object

RECORD = "dus_checkpoint.json"
RECORD_FORMAT = "dus-checkpoint/1"
METADATA = ".metadata"  # DCP's, a pickle
MAX_RECORD_BYTES = 1 << 20  # a record lists a few files per rank

# Everything a DCP `.metadata` pickle may name (torch 2.x), and nothing that can run code.
_DCP = "torch.distributed.checkpoint.metadata"
SAFE_GLOBALS = {
    (_DCP, "Metadata"),
    (_DCP, "TensorStorageMetadata"),
    (_DCP, "ChunkStorageMetadata"),
    (_DCP, "BytesStorageMetadata"),
    (_DCP, "TensorProperties"),
    (_DCP, "_MEM_FORMAT_ENCODING"),
    (_DCP, "MetadataIndex"),
    (_DCP, "StorageMeta"),
    DCP_STORAGE_INFO,
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib._local", "PosixPath"),  # StorageMeta.checkpoint_id
}

# What a record or state that passed its digests but still does not fit raises while being applied.
# Not RuntimeError: that is also how torch reports running out of memory or a failed collective, which
# are failures of the run, not of the checkpoint; the shapes it would report are checked first (_check_fit).
MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError)


@contextmanager
def _single_process_ok():
    """DCP warns when there is no process group; one process is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


@contextmanager
def malformed_state(path: Path):
    """A checkpoint's state that cannot be applied is bad input, not a crash."""
    try:
        yield
    except MALFORMED as e:
        raise InputError(f"{path}: the saved trainer state does not fit this run ({_first_line(_cause(e))})") from e


def _cause(e: BaseException) -> BaseException:
    """DCP wraps each rank's exception, with its traceback, in one CheckpointException."""
    if isinstance(e, CheckpointException) and e.failures:
        return next(iter(e.failures.values()))[0]  # (exception, traceback) of the first failing rank
    return e


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


# --- trainer and RNG state as JSON ---------------------------------------------------------------
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s, validate=True)), dtype=torch.uint8)


def rng_state() -> dict:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "torch": _b64(torch.get_rng_state()),
        "numpy": {
            "name": name,
            "keys": keys.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = _b64(torch.cuda.get_rng_state())
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(_rng_bytes(state["torch"], torch.get_rng_state()))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_rng_bytes(state["cuda"], torch.cuda.get_rng_state()))


def _rng_bytes(saved: str, current: torch.Tensor) -> torch.Tensor:
    """A saved generator state, refused as malformed (ValueError) unless the size of the current one
    (torch would raise RuntimeError, which is not taken for bad input)."""
    state = _unb64(saved)
    if state.shape != current.shape:
        raise ValueError(f"an RNG state of {state.numel()} bytes, not {current.numel()}")
    return state


def _to_json(state: dict) -> str:
    return json.dumps(state, allow_nan=False)


def _from_json(value: object, path: Path, key: str) -> dict:
    try:
        state = json.loads(value, parse_constant=_no_constant) if isinstance(value, str) else None
    except (ValueError, RecursionError):
        state = None
    if not isinstance(state, dict):
        raise InputError(f"{path}: its '{key}' state is not a JSON object")
    return state


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


# --- the record: every file's size and sha256 ----------------------------------------------------
def write_record(path: Path, step: int) -> None:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name != RECORD)
    record = {
        "format": RECORD_FORMAT,
        "step": step,
        "files": {
            p.name: {"bytes": p.stat().st_size, "sha256": d} for p, d in zip(files, file_digests(files, "sha256"))
        },
    }
    atomic_write_text(path / RECORD, json.dumps(record, indent=1) + "\n")


def read_record(path: Path) -> dict[str, dict]:
    """The record's {file name: {"bytes", "sha256"}}, after checking its shape."""
    file = path / RECORD
    with open(file, "rb") as f:
        text = f.read(MAX_RECORD_BYTES + 1)
    try:
        if len(text) > MAX_RECORD_BYTES:
            raise ValueError(f"larger than {MAX_RECORD_BYTES:,} bytes")
        record = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise InputError(f"{file}: not a valid checkpoint record ({e})") from None
    problem = _record_problem(record, path.name)
    if problem:
        raise InputError(f"{file}: not a valid checkpoint record ({problem})")
    return record["files"]


def _unique_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key appears twice")
    return dict(pairs)


def _record_problem(record: object, directory: str) -> str | None:
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return f"format is not {RECORD_FORMAT}"
    if type(record.get("step")) is not int or directory != f"step_{record['step']:08d}":
        return "its step is not its directory's"
    files = record.get("files")
    if not isinstance(files, dict) or METADATA not in files:
        return f"it does not list {METADATA}"
    for name, entry in files.items():
        if name in (".", "..", RECORD) or "/" in name or "\\" in name or "\0" in name:
            return f"file name {name!r}"
        if (
            not isinstance(entry, dict)
            or set(entry) != {"bytes", "sha256"}
            or type(entry["bytes"]) is not int
            or entry["bytes"] < 0
            or not _is_sha256(entry["sha256"])
        ):
            return f"entry of {name!r}"
    return None


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def verify_files(path: Path, files: dict[str, dict]) -> None:
    """Every recorded file present, of its recorded size and sha256."""
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise InputError(f"{file}: missing, but {RECORD} lists it: the checkpoint is incomplete or modified")
        size = file.stat().st_size
        if size != entry["bytes"]:
            how = "truncated or modified" if size < entry["bytes"] else "modified"
            raise InputError(
                f"{file}: {size:,} bytes, but {RECORD} records {entry['bytes']:,}: the checkpoint is {how}"
            )
    names = sorted(files)
    for name, digest in zip(names, file_digests([path / n for n in names], "sha256")):
        if digest != files[name]["sha256"]:
            raise InputError(
                f"{path / name}: sha256 differs from the one {RECORD} records: the checkpoint is corrupt or modified"
            )


# --- DCP's metadata, unpickled with an allowlist -------------------------------------------------
class MetadataUnpickler(pickle.Unpickler):
    """Admits the classes DCP metadata is made of; any other global (a function, os.system...) is refused
    before it is looked up, so no pickled call can run."""

    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if module == "torch" and isinstance(vars(torch).get(name), torch.dtype):  # vars: no lazy imports
            return vars(torch)[name]
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise InputError(
            f"{self.path}: refusing to unpickle {module}.{name}: only torch.distributed.checkpoint "
            "metadata classes are allowed in a checkpoint"
        )

    def persistent_load(self, pid):
        raise InputError(f"{self.path}: refusing a persistent id in checkpoint metadata")


def load_metadata(path: Path, files: dict[str, dict]) -> Metadata:
    """`.metadata` unpickled with the allowlist; its storage entries must point into recorded files."""
    file = path / METADATA
    try:
        with open(file, "rb") as f:
            metadata = MetadataUnpickler(f, file).load()
    except (
        pickle.UnpicklingError,
        EOFError,
        OSError,
        ImportError,
        RecursionError,
        MemoryError,
        RuntimeError,
        *MALFORMED,
    ) as e:  # while unpickling, every failure comes from the bytes
        raise InputError(f"{file}: not valid checkpoint metadata ({_first_line(e)})") from None
    problem = _metadata_problem(metadata, files)
    if problem:
        raise InputError(f"{file}: not valid checkpoint metadata ({problem})")
    return metadata


def _metadata_problem(metadata: object, files: dict[str, dict]) -> str | None:
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
        return "not a torch.distributed.checkpoint Metadata"
    if not isinstance(metadata.storage_data, dict):
        return "no storage data"
    for index, info in metadata.storage_data.items():
        if not isinstance(index, MetadataIndex) or not isinstance(info, dcp_storage_info()):
            return "a storage entry of the wrong type"
        size = files.get(info.relative_path, {}).get("bytes") if isinstance(info.relative_path, str) else None
        if size is None:
            return f"{index.fqn!r} is stored in {info.relative_path!r}, a file {RECORD} does not list"
        if (
            type(info.offset) is not int
            or type(info.length) is not int
            or info.offset < 0
            or info.length < 0
            or info.offset + info.length > size
            or info.transform_descriptors
        ):
            return f"the storage range of {index.fqn!r}"
    return None


class RecordedReader(FileSystemReader):
    """DCP's reader, handed metadata that was already checked instead of unpickling `.metadata` itself."""

    def __init__(self, path: Path, metadata: Metadata):
        super().__init__(path)
        self.metadata = metadata

    def read_metadata(self, *args, **kwargs) -> Metadata:
        self.metadata.storage_meta = StorageMeta(load_id=self.load_id)  # as FileSystemReader does
        return self.metadata


class WeightsOnlyPlanner(DefaultLoadPlanner):
    """DCP's planner, but non-tensor items (ours: JSON strings; the optimizer's hyperparameters) are read
    with torch.load(weights_only=True): plain data and tensors only, never a pickled call."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:  # torch's message advises weights_only=False: keep only its reason
            why = next((ln.strip() for ln in str(e).splitlines() if "unsupported global" in ln.lower()), "")
            raise InputError(
                f"refusing to unpickle item {read_item.dest_index.fqn!r}: only tensors and plain "
                f"data are allowed{f' ({why})' if why else ''}"
            ) from None
        if self.flatten_state_dict:
            dcp_set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def _check_fit(path: Path, metadata: Metadata, state: dict) -> None:
    """DCP loads the entries the run asks for and ignores the rest, so a checkpoint of a deeper model (or
    other frozen layers) would half-load without a word: the entries must be the same."""

    def entries(keys) -> set[str]:
        return {k for k in keys if not k.startswith("rank")}  # each rank loads only its own "rankN"

    flat = dcp_flatten(state)
    ours, saved = entries(flat), entries(metadata.state_dict_metadata)
    if ours != saved:
        example = min(saved - ours) if saved - ours else min(ours - saved)
        raise InputError(
            f"{path} holds another model or other trained layers ({len(saved ^ ours)} entries differ, "
            f"e.g. {example!r}): resume with the model and --freeze that wrote it"
        )
    for key in sorted(ours):
        stored = getattr(metadata.state_dict_metadata[key], "size", None)  # tensors only
        if isinstance(flat[key], torch.Tensor) and stored is not None and tuple(stored) != tuple(flat[key].shape):
            raise InputError(
                f"{path} holds another model: {key!r} is {list(stored)} there, {list(flat[key].shape)} in this run"
            )


# --- the checkpointer ----------------------------------------------------------------------------
class Checkpointer:
    def __init__(self, root: Path, d: Dist, keep: int):
        self.root, self.d, self.keep = Path(root), d, keep
        self._checked: dict[Path, Metadata] = {}

    def complete(self) -> list[Path]:
        """Checkpoints with a record, oldest first: only those are ever resumed."""
        return sorted(p for p in self.root.glob("step_*") if (p / RECORD).is_file())

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def unrecorded(self) -> Path | None:
        """The newest checkpoint DCP finished but no record marks complete: a save interrupted just
        before its record, or one written by a dus before records (it may hold our pickles)."""
        found = sorted(p for p in self.root.glob("step_*") if (p / METADATA).is_file() and not (p / RECORD).is_file())
        return found[-1] if found else None

    def save(self, step: int, model, optimizer, shared: dict, per_rank: dict) -> Path:
        path = self.root / f"step_{step:08d}"
        if self.d.is_main and path.exists():  # an interrupted save of this step: no stale file may outlive it
            shutil.rmtree(path)
        barrier(self.d)
        model_sd, optim_sd = get_state_dict(model, optimizer)
        with _single_process_ok():
            dcp.save(
                {
                    "model": model_sd,
                    "optim": optim_sd,
                    "trainer": _to_json(shared),
                    f"rank{self.d.rank}": _to_json(per_rank),
                },
                checkpoint_id=path,
            )
        barrier(self.d)  # every rank's files are written
        if self.d.is_main:
            follow_umask(path)
            write_record(path, step)
            if self.keep:
                for old in self.complete()[: -self.keep]:
                    shutil.rmtree(old, ignore_errors=True)
        barrier(self.d)
        return path

    def check(self, path: Path) -> None:
        """Every file of `path` against its record, and its metadata through the allowlist, before anything
        is loaded. Rank 0 checks and every rank gets the verdict, so all stop together."""
        verdict = None
        if self.d.is_main:
            try:
                files = read_record(path)
                verify_files(path, files)
                verdict = files
            except (InputError, OSError) as e:
                verdict = str(e) if isinstance(e, InputError) else f"{path}: cannot read the checkpoint ({e})"
        verdict = broadcast_object(verdict, self.d)
        if isinstance(verdict, str):
            raise InputError(verdict)
        self._checked[path] = load_metadata(path, verdict)

    def _metadata(self, path: Path) -> Metadata:
        if path not in self._checked:
            raise AssertionError(f"{path} is loaded before it is checked")
        return self._checked[path]

    def _load(self, path: Path, state: dict) -> None:
        reader = RecordedReader(path, self._metadata(path))
        try:
            with _single_process_ok():
                dcp.load(state, storage_reader=reader, planner=WeightsOnlyPlanner())
        except (CheckpointException, *MALFORMED) as e:
            cause = _cause(e)
            if isinstance(cause, InputError):
                raise InputError(f"{path}: {cause}") from None
            if not isinstance(cause, MALFORMED):  # a rank ran out of memory, a collective failed: not the file
                raise cause from (None if cause is e else e)  # the rank's own error, not DCP's BaseException
            raise InputError(f"{path}: cannot be loaded into this run ({_first_line(cause)})") from None

    def load_shared(self, path: Path) -> dict:
        """Just the trainer state, to check the run layout before loading shards."""
        state = {"trainer": ""}
        self._load(path, state)
        return _from_json(state["trainer"], path, "trainer")

    def load(self, path: Path, model, optimizer) -> tuple[dict, dict]:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        key = f"rank{self.d.rank}"
        state = {"model": model_sd, "optim": optim_sd, "trainer": "", key: ""}
        _check_fit(path, self._metadata(path), state)
        self._load(path, state)
        with malformed_state(path):
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        return _from_json(state["trainer"], path, "trainer"), _from_json(state[key], path, key)
