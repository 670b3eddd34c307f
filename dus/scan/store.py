"""Where the prefix cache lives: in memory up to --memory, else in one file-backed array under --out.

The file holds raw float bytes (a numpy memmap), never a pickle, and is removed
when the scan process ends.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path

CACHE_FILE = ".prefix-cache.bin"


def keep(prefixes: list, cap: int, out: Path) -> int:
    """Move the prefixes' hidden states into a file when they exceed `cap` bytes; return their bytes."""
    import numpy as np
    import torch

    hidden = [h for p in prefixes for h in p.hidden]
    size = sum(h.numel() * h.element_size() for h in hidden)
    if size <= cap or not hidden or any(h.device.type != "cpu" for h in hidden):
        return size
    out.mkdir(parents=True, exist_ok=True)
    path = out / CACHE_FILE
    store = np.memmap(path, dtype=np.uint8, mode="w+", shape=(size,))
    atexit.register(_remove, path)
    flat = torch.from_numpy(store)
    offset = 0
    for p in prefixes:
        for k, h in enumerate(p.hidden):
            nbytes = h.numel() * h.element_size()
            view = flat[offset : offset + nbytes].view(h.dtype).view(h.shape)
            view.copy_(h)
            p.hidden[k] = view
            offset += nbytes
    return size


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
