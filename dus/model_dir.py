"""One message per cause when a path is not the model directory a command needs, the same in every command.

{path}: does not exist                                   (a Hub id is named when the command takes one)
{path}: is a file, not a model directory
{path}: has no config.json (not a Hugging Face model directory)
{path}: has no dus_plan.json (not written by dus)
"""

from __future__ import annotations

from pathlib import Path

from dus.errors import InputError


def model_dir_problem(path: str | Path, *, manifest: bool = False, hub_id: bool = False) -> str | None:
    """What keeps `path` from being a model directory (with a dus_plan.json if `manifest`); None if nothing."""
    local = Path(path).expanduser()
    if not local.exists():
        path_like = str(path).startswith(("/", ".", "~"))  # no Hub id starts so: the hint would be noise
        return f"{path}: does not exist" + (" (nor is it an owner/name Hub id)" if hub_id and not path_like else "")
    if not local.is_dir():
        return f"{path}: is a file, not a model directory"
    if not (local / "config.json").is_file():
        return f"{path}: has no config.json (not a Hugging Face model directory)"
    if manifest and not (local / "dus_plan.json").is_file():
        return f"{path}: has no dus_plan.json (not written by dus)"
    return None


def model_dir_error(path: str | Path, *, manifest: bool = False, hub_id: bool = False) -> InputError:
    """The InputError to raise for `path`, the caller having found it is not what it needs."""
    return InputError(model_dir_problem(path, manifest=manifest, hub_id=hub_id) or f"{path}: not a model directory")


def check_model_dir(path: str | Path, *, manifest: bool = False) -> Path:
    if model_dir_problem(path, manifest=manifest):
        raise model_dir_error(path, manifest=manifest)
    return Path(path)
