"""Sharded checkpoints with torch.distributed.checkpoint (DCP).

OUTPUT/checkpoints/step_00000100/ holds each rank's shards of the model and
optimizer, the shared trainer state (step, tokens, scheduler) and, under a key
per rank, that rank's data position and RNG states. DCP writes `.metadata`
last, so a directory without it is an interrupted save and is ignored.
"""

from __future__ import annotations

import io
import pickle
import random
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from dus.train.parallel import Dist, barrier


@contextmanager
def _single_process_ok():
    """DCP warns when there is no process group; one process is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _blob(obj) -> io.BytesIO:
    return io.BytesIO(pickle.dumps(obj))


def _unblob(blob) -> object:
    return pickle.loads(blob.getvalue() if isinstance(blob, io.BytesIO) else blob)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    def __init__(self, root: Path, d: Dist, keep: int):
        self.root, self.d, self.keep = Path(root), d, keep

    def complete(self) -> list[Path]:
        return sorted(p for p in self.root.glob("step_*") if (p / ".metadata").is_file())

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def save(self, step: int, model, optimizer, shared: dict, per_rank: dict) -> Path:
        path = self.root / f"step_{step:08d}"
        model_sd, optim_sd = get_state_dict(model, optimizer)
        with _single_process_ok():
            dcp.save({"model": model_sd, "optim": optim_sd, "trainer": _blob(shared),
                      f"rank{self.d.rank}": _blob(per_rank)}, checkpoint_id=path)
        barrier(self.d)
        if self.d.is_main and self.keep:
            for old in self.complete()[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def load_shared(self, path: Path) -> dict:
        """Just the trainer state, to check the run layout before loading shards."""
        state = {"trainer": io.BytesIO()}
        with _single_process_ok():
            dcp.load(state, checkpoint_id=path)
        return _unblob(state["trainer"])

    def load(self, path: Path, model, optimizer) -> tuple[dict, dict]:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        key = f"rank{self.d.rank}"
        state = {"model": model_sd, "optim": optim_sd, "trainer": io.BytesIO(), key: io.BytesIO()}
        with _single_process_ok():
            dcp.load(state, checkpoint_id=path)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        return _unblob(state["trainer"]), _unblob(state[key])
