"""The data files a corpus option names (files, or directories of them), found without importing torch or
datasets, so `dus pretrain` can say what it will read before the slow imports."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dus.errors import InputError
from dus.model_dir import check_model_dir

BUILDERS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
COMPRESSION = (".gz", ".bz2", ".xz", ".zst")


def _builder(path: Path) -> str | None:
    suffixes = [s for s in path.suffixes if s not in COMPRESSION]
    return BUILDERS.get(suffixes[-1].lower()) if suffixes else None


def resolve_files(paths: list[str]) -> dict[str, list[str]]:
    """Files by datasets builder ('text', 'json', 'parquet'); a directory contributes all its data files."""
    found: dict[str, list[str]] = {}
    for name in paths:
        path = Path(name)
        if not path.exists():
            raise InputError(f"data path not found: {name}")
        if path.is_dir():
            files = [
                p
                for p in sorted(path.rglob("*"))
                if p.is_file() and _builder(p) and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ]
            if not files:
                raise InputError(f"no .txt, .jsonl, .json or .parquet files under {name}")
        elif _builder(path):
            files = [path]
        else:
            raise InputError(f"unsupported data file {name}: use .txt, .md, .jsonl, .json or .parquet")
        for f in files:
            if f.stat().st_size:  # datasets cannot read an empty file; it holds no text anyway
                found.setdefault(_builder(f), []).append(str(f))
    if not found:
        raise InputError(f"empty corpus: every file in {', '.join(paths)} is empty")
    return found


def reading_line(model: str, data: list[str], seq_len: int, streaming: bool) -> str:
    """What a run reads first: `pretrain MODEL (L layers): tokenizing N data file(s), SIZE, into S-token blocks`."""
    from rich import filesize

    config = json.loads((check_model_dir(model) / "config.json").read_text())
    text = config.get("text_config") or config
    layers = next(
        (text[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if isinstance(text.get(k), int)), None
    )
    files = [f for group in resolve_files(data).values() for f in group]
    size = sum(os.path.getsize(f) for f in files)
    return (
        f"pretrain {model}" + (f" ({layers} layers)" if layers else "") + f": "
        f"{'streaming' if streaming else 'tokenizing'} {len(files):,} data file(s), {filesize.decimal(size)}, "
        f"into {seq_len:,}-token blocks, then loading the model"
    )
