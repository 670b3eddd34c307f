"""Resolve a SOURCE (model directory, bare config.json, or Hub repo id) into
its config and a validated map of where every tensor's bytes live.

Only headers are read. Every file read from a model directory must resolve
inside it (or, for a Hugging Face cache snapshot, inside the repo's cache
folder, whose blobs/ the snapshot's symlinks point into); pickle checkpoints
are refused, never loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from dus.checks.config_check import check_config
from dus.errors import InputError
from dus.model_dir import model_dir_error
from dus.read import strict_json
from dus.read.architecture import (
    find_layer_prefix,
    layer_count_key,
    split_layer_name,
    stack_config_key,
    with_layer_count,
)
from dus.read.safetensors import DTYPE_CODES, DTYPE_SIZES, TensorInfo, read_header

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "spiece.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def is_repo_id(ref: str) -> bool:
    """'owner/name' by the Hub's rules (huggingface_hub's validate_repo_id) and not an existing local
    path. The owner is required here: a bare word is taken for a missing directory, not looked up."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if ref.count("/") != 1 or Path(ref).expanduser().exists():
        return False
    try:
        validate_repo_id(ref)
    except HFValidationError:
        return False
    return True


@dataclass
class Source:
    ref: str
    config: dict
    tensors: dict[str, TensorInfo]
    directory: Path | None = None
    revision: str | None = None
    has_weights: bool = True
    stack: str | None = None  # --stack PREFIX: the stack to grow where the checkpoint holds several
    _prefix: str | None = field(default=None, repr=False)

    @cached_property
    def stack_config(self) -> str | None:
        """The nested config (text_config) that counts the stack's layers; None: config.json itself."""
        return stack_config_key(self.config, self.tensors, self.stack)

    @property
    def layer_config(self) -> dict:
        return self.config[self.stack_config] if self.stack_config else self.config

    @property
    def layer_key(self) -> str:
        return layer_count_key(self.layer_config)

    @property
    def num_layers(self) -> int:
        return self.layer_config[self.layer_key]

    @property
    def layer_prefix(self) -> str:
        if self._prefix is None:
            self._prefix = find_layer_prefix(self.tensors, self.num_layers, self.stack)
        return self._prefix

    @cached_property
    def layer_tensors(self) -> dict[int, dict[str, str]]:
        """{layer index: {suffix within the layer: full tensor name}}."""
        layers: dict[int, dict[str, str]] = {i: {} for i in range(self.num_layers)}
        for name in self.tensors:
            split = split_layer_name(name, self.layer_prefix)
            if split:
                layers[split[0]][split[1]] = name
        return layers

    def side_files(self) -> list[Path]:
        if self.directory is None:
            return []
        return [path for f in SIDE_FILES if (path := model_file(self.directory, f)).is_file()]


def open_source(
    ref: str, *, need_weights: bool = True, stack: str | None = None, revision: str | None = None
) -> Source:
    """`stack`: the numbered tensor-name prefix to grow (--stack), where the checkpoint holds several;
    `revision`: for a Hub repo id, the commit to read (None: the newest, or the cache's for `main` offline)."""
    source = _open_source(ref, need_weights, revision)
    source.stack = stack
    return source


def _open_source(ref: str, need_weights: bool, revision: str | None = None) -> Source:
    path = Path(ref).expanduser()
    if path.is_file():
        if path.suffix != ".json":
            raise InputError(f"{ref}: is a file, not a model directory (a SOURCE file is a config.json or a .gguf)")
        if need_weights:
            raise InputError(f"{ref} is a bare config: building needs a model directory with safetensors weights")
        config = read_config(path)
        return Source(ref, config, meta_tensors(config), has_weights=False)
    if path.is_dir():
        return open_directory(path, ref, need_weights=need_weights)
    if is_repo_id(ref):
        return open_hub_source(ref, need_weights=need_weights, revision=revision)
    raise model_dir_error(ref, hub_id=True)


def open_hub_source(repo_id: str, *, need_weights: bool, revision: str | None = None) -> Source:
    """Config, side files and safetensors from the Hub or its cache (never pickles); for a
    plan online, only the config and the remote headers."""
    from dus.read import hub

    if need_weights or hub.offline():
        directory = hub.download(repo_id, ["config.json", *SIDE_FILES, "*.safetensors", INDEX_FILE], revision)
        return open_directory(directory, repo_id, need_weights=need_weights, revision=directory.name)
    directory = hub.download(repo_id, ["config.json"], revision)
    source = open_directory(directory, repo_id, need_weights=False, revision=directory.name)
    source.tensors = hub.remote_tensors(repo_id, directory.name)
    return source


def open_directory(path: Path, ref: str, *, need_weights: bool = True, revision: str | None = None) -> Source:
    config = read_config(model_file(path, "config.json"))
    tensors = local_tensors(path)
    if tensors is None:
        if need_weights:
            raise InputError(f"{ref}: no {SINGLE_FILE} or {INDEX_FILE} in the model directory")
        source = Source(ref, config, meta_tensors(config), directory=path, revision=revision, has_weights=False)
    else:
        source = Source(ref, config, tensors, directory=path, revision=revision)
    source.side_files()  # a side file linked outside is refused now, before any output is written
    return source


def model_file(directory: Path, name: str) -> Path:
    """`directory/name`, refused when a symlink takes it outside `allowed_root(directory)`."""
    path = directory / name
    if path.exists() and not (target := path.resolve()).is_relative_to(allowed_root(directory)):
        raise InputError(f"{path}: resolves to {target}, outside the model directory; refusing to read it")
    return path


def allowed_root(directory: Path) -> Path:
    """Where a model directory's files may resolve: the directory itself, or for a Hugging
    Face cache snapshot (models--org--name/snapshots/<rev>/, whose files link to
    ../../blobs/<hash>) the repo's cache folder models--org--name/, as huggingface_hub lays it out."""
    directory = directory.resolve()
    if directory.parent.name == "snapshots" and directory.parent.parent.name.startswith("models--"):
        return directory.parent.parent
    return directory


def read_config(path: Path) -> dict:
    if not path.is_file():
        raise model_dir_error(path.parent) if path.name == "config.json" else InputError(f"{path}: does not exist")
    config = strict_json.loads(path.read_bytes(), str(path))  # untrusted: no NaN, repeated keys, ...
    if not isinstance(config, dict):
        raise InputError(f"{path}: config must be a JSON object")
    return check_config(with_layer_count(config), str(path))


def local_tensors(directory: Path) -> dict[str, TensorInfo] | None:
    """All tensors of a local checkpoint, or None when it has no safetensors weights."""
    if model_file(directory, INDEX_FILE).is_file():
        return _sharded_tensors(directory)
    if (single := model_file(directory, SINGLE_FILE)).is_file():
        tensors, _ = read_header(str(single))
        return tensors
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise InputError(
            f"{directory}: only safetensors checkpoints are supported; refusing to unpickle "
            f"{pickles[0]} (pickle files can run code). Convert it to safetensors first."
        )
    return None


def _sharded_tensors(directory: Path) -> dict[str, TensorInfo]:
    index_path = directory / INDEX_FILE
    index = strict_json.loads(index_path.read_bytes(), str(index_path))
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InputError(f"{index_path}: not a valid safetensors index (needs a weight_map of name -> file)")
    tensors: dict[str, TensorInfo] = {}
    for filename in sorted(set(weight_map.values())):
        shard = _inside(directory, filename)
        header, _ = read_header(str(shard))
        for name, info in header.items():
            if weight_map.get(name) != filename:
                raise InputError(f"{filename}: tensor {name!r} is not listed for this file in {INDEX_FILE}")
            tensors[name] = info
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise InputError(f"{INDEX_FILE} lists {missing[0]!r} in {weight_map[missing[0]]}, which does not contain it")
    return tensors


def _inside(directory: Path, filename: str) -> Path:
    """A weight-map file name, refused unless it is a safetensors file in `directory`."""
    if os.path.isabs(filename) or ".." in Path(filename).parts or not filename.endswith(".safetensors"):
        raise InputError(
            f"{INDEX_FILE}: weight_map entry {filename!r} points outside the model directory or is not a "
            "safetensors file"
        )
    candidate = model_file(directory, filename)
    if not candidate.is_file():
        raise InputError(f"{INDEX_FILE}: shard {filename!r} is missing")
    return candidate


def meta_tensors(config: dict) -> dict[str, TensorInfo]:
    """Names, shapes and dtypes a config implies, from a weightless (meta) model."""
    from dus.checks.transformers_check import meta_model

    model = meta_model(config)
    dtype = DTYPE_CODES.get(str(config.get("dtype") or config.get("torch_dtype") or "float32"), "F32")
    tensors = {}
    for name, param in model.named_parameters():
        nbytes = param.numel() * DTYPE_SIZES[dtype]
        tensors[name] = TensorInfo("", dtype, tuple(param.shape), 0, nbytes)
    return tensors
