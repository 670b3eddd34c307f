"""YAML option files (recipes, training configs): a mapping, or a one-line error."""

from __future__ import annotations

from pathlib import Path

from dus.errors import InputError


def read_mapping(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{path}: invalid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: must hold a mapping of key: value")
    return data
