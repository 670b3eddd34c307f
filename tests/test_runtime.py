"""dus/runtime.py: the one --dtype/--device parser, device choice, the safetensors-only loader, the layer finder."""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path

import pytest
import torch
from instruct_fixtures import tiny_model_dir
from models import ARCHITECTURES, make_model, save_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from dus import runtime
from dus.errors import InputError
from dus.options import dtype_option
from dus.read.source import is_repo_id

ROOT = Path(__file__).resolve().parent.parent

ACCEPTED = {
    "auto": "auto",
    "float32": "float32",
    "fp32": "float32",
    "f32": "float32",
    "FP32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "BF16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


@pytest.mark.parametrize("name, canonical", ACCEPTED.items())
def test_dtype_names_accepted(name, canonical):
    assert runtime.dtype_name(name) == canonical
    if canonical != "auto":
        assert runtime.resolve_dtype(name, "cpu") == getattr(torch, canonical)


def _listed_dtypes(text: str) -> set[str]:
    """The names of an "auto | bfloat16 | float16 | float32" list in a help text or a doc line."""
    (listed,) = re.findall(r"auto(?: \| \w+)+", text)
    return set(listed.split(" | "))


def test_dtype_names_are_the_documented_set():
    """The canonical names are torch's own dtype names, exactly those the --dtype help and the recipe
    docs list; every shorthand names a dtype of its stated width."""
    import typer.main

    from dus.cli import app

    documented = _listed_dtypes(inspect.signature(dtype_option).parameters["help"].default)
    commands = typer.main.get_command(app).commands
    for command in ("plan", "build", "chat", "eval"):
        (dtype,) = [p for p in commands[command].params if "--dtype" in p.opts]
        assert _listed_dtypes(dtype.help) == documented, command
    recipe_line = next(
        line for line in (ROOT / "docs" / "recipes.md").read_text().splitlines() if line.startswith("dtype:")
    )
    assert documented == _listed_dtypes(recipe_line)
    assert set(runtime.DTYPES.values()) == documented
    for alias, canonical in runtime.DTYPES.items():
        if canonical != "auto":
            dtype = getattr(torch, canonical)
            assert isinstance(dtype, torch.dtype) and str(dtype) == f"torch.{canonical}"
            width = re.search(r"\d+", alias)
            assert (int(width[0]) if width else getattr(torch, alias).itemsize * 8) == dtype.itemsize * 8, alias


@pytest.mark.parametrize("name", ["float8", "int4", "fp64", "float64", "", "bfloat"])
def test_dtype_names_refused(name):
    with pytest.raises(InputError, match="unknown dtype .* for --dtype: use auto, float32"):
        runtime.dtype_name(name)


def test_auto_dtype_is_float32_on_cpu():
    assert runtime.resolve_dtype("auto", "cpu") is torch.float32
    assert runtime.dtype_name(None) == "auto"


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_device_names_accepted(name):
    assert runtime.device_name(name) == name


@pytest.mark.parametrize("name", ["tpu", "cuda:", "cuda:x", "cpu:0", "gpu", "CUDA", ""])
def test_device_names_refused(name):
    with pytest.raises(InputError, match="--device must be one of auto, cuda, cpu, mps, cuda:N"):
        runtime.device_name(name)


def test_device_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == "cpu"
    assert runtime.resolve_device("cpu") == "cpu"
    for name in ("cuda", "cuda:1"):
        with pytest.raises(InputError, match=f"--device {name}, but PyTorch sees no CUDA device"):
            runtime.resolve_device(name)
    with pytest.raises(InputError, match="no MPS device"):
        runtime.resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert runtime.resolve_device("auto") == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runtime.resolve_device("auto") == "cuda"
    assert runtime.resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(InputError, match="sees 2 CUDA"):
        runtime.resolve_device("cuda:2")


def test_pretrain_and_build_parse_through_the_runtime(tmp_path):
    from dus.api import plan
    from dus.plan.layout import _dtype_code

    save_model("llama", tmp_path / "src")
    assert plan(str(tmp_path / "src"), overlap=1, dtype="bf16").plan.dtype == "bfloat16"  # config.json's name
    from dus.train.config import PretrainConfig

    cfg = PretrainConfig(model="m", data=["d"], output="o", dtype="bf16", device="cuda:0").validate()
    assert (cfg.dtype, cfg.device) == ("bfloat16", "cuda:0")
    with pytest.raises(InputError, match="float16 cannot train"):
        PretrainConfig(model="m", data=["d"], output="o", dtype="half").validate()
    assert (_dtype_code("bf16"), _dtype_code("fp32"), _dtype_code("auto")) == ("BF16", "F32", None)
    with pytest.raises(InputError, match="unknown dtype"):
        _dtype_code("int8")


def test_loader_loads_safetensors(tmp_path):
    directory = tiny_model_dir()
    model, device = runtime.load_model(directory, "cpu", "bf16")
    assert device == "cpu" and model.dtype == torch.bfloat16 and not model.training
    assert runtime.load_tokenizer(directory).eos_token_id is not None


def test_loader_refuses_pickle_only_directory(tmp_path):
    model = make_model("llama")
    (tmp_path / "m").mkdir()
    model.config.save_pretrained(tmp_path / "m")
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")  # what transformers would load
    with pytest.raises(InputError, match="refusing to unpickle pytorch_model.bin"):
        runtime.load_model(tmp_path / "m", "cpu")


def test_loader_refuses_directory_without_weights_or_config(tmp_path):
    save_model("llama", tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(InputError, match="no model.safetensors"):
        runtime.load_model(tmp_path / "m", "cpu")
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(InputError, match="no config.json"):
        runtime.load_model(tmp_path / "m", "cpu")
    with pytest.raises(InputError, match="missing: does not exist"):
        runtime.load_tokenizer(tmp_path / "missing")


def test_loader_uses_safetensors_when_both_exist(tmp_path):
    """With a pickle next to the safetensors, the safetensors weights are the ones loaded."""
    save_model("llama", tmp_path / "m", seed=1)
    torch.save({"model.embed_tokens.weight": torch.zeros(1)}, tmp_path / "m" / "pytorch_model.bin")
    model, _ = runtime.load_model(tmp_path / "m", "cpu", "float32")
    assert torch.equal(model.model.embed_tokens.weight, make_model("llama", seed=1).model.embed_tokens.weight)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_layer_finder_uses_no_split_modules(arch):
    model = make_model(arch)
    layers = runtime.decoder_layers(model)
    assert len(layers) == 4
    assert all(type(layer).__name__ in model._no_split_modules for layer in layers)


class NoHints(nn.Module):
    """A model with no `_no_split_modules`, and a decoy ModuleList of the same length before its layers."""

    def __init__(self, n: int = 3):
        super().__init__()
        self.config = LlamaConfig(num_hidden_layers=n)
        self.heads = nn.ModuleList(nn.Linear(2, 2) for _ in range(n + 1))
        self.blocks = nn.ModuleList(nn.Linear(2, 2) for _ in range(n))


def test_layer_finder_fallback_is_the_list_as_long_as_the_layer_count():
    model = NoHints()
    assert runtime.decoder_layers(model) is model.blocks
    model.config.num_hidden_layers = 7
    with pytest.raises(InputError, match="cannot find the 7 decoder layers of NoHints"):
        runtime.decoder_layers(model)


def test_layer_finder_prefers_no_split_modules_over_an_earlier_list_of_the_same_length():
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=16,
            hidden_size=8,
            intermediate_size=8,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    modules = model.model._modules
    model.model._modules = {"aaa_decoy": nn.ModuleList(nn.Linear(2, 2) for _ in range(2)), **modules}  # visited first
    assert runtime.decoder_layers(model) is model.model.layers
    model._no_split_modules = None
    assert runtime.decoder_layers(model) is model.model.aaa_decoy  # the fallback alone takes the first


def test_repo_ids():
    assert is_repo_id("mistralai/Mistral-7B-v0.1")
    for ref in ("gpt2", "./local", "a/b/c", "org/na..me", "org/x.git", "-org/x", "/abs/path"):
        assert not is_repo_id(ref), ref


def test_cosine_schedule_matches_the_old_warmup_and_ends_at_min_lr():
    """Warmup equals the hand-written schedule it replaced ((step+1)/warmup, no step at lr 0);
    the decay is the old one a step earlier, so the last step trains at exactly min_lr."""
    from dus.train.loop import cosine_schedule

    def old(step, warmup, total, min_ratio):
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    for warmup, total in ((0, 10), (1, 10), (4, 20), (10, 11)):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
        sched = cosine_schedule(opt, warmup, total, 0.1)
        lrs = []
        for _ in range(total):
            lrs.append(opt.param_groups[0]["lr"] / 2.0)
            opt.step()
            sched.step()
        for step, lr in enumerate(lrs):
            want = old(step, warmup, total, 0.1) if step < warmup else old(step + 1, warmup, total, 0.1)
            assert lr == pytest.approx(want, abs=1e-12), (warmup, total, step)
        assert lrs[-1] == pytest.approx(0.1) and min(lrs) > 0


def test_one_copy_of_each_runtime_job():
    """Only dus/runtime.py loads checkpoints and parses --dtype/--device (dus/testing/fetch.py reads a GGUF file)."""
    import re
    from pathlib import Path

    import dus

    root = Path(dus.__file__).parent
    jobs = re.compile(
        r"(AutoModelForCausalLM|AutoTokenizer)\.from_pretrained\(|def (decoder_layers|resolve_device|"
        r"resolve_dtype|dtype_name|device_name|_device|_dtype|compute_dtype)\("
    )
    found = {str(p.relative_to(root)) for p in root.rglob("*.py") if jobs.search(p.read_text())}
    assert found <= {"runtime.py", "testing/fetch.py"}, found
