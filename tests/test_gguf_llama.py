"""llama.cpp runs grown GGUFs like their transformers in-memory DUS references.

Optional: these tests skip unless the `llama_cpp` package (llama-cpp-python,
which compiles llama.cpp) is installed; the float32 ones also need llama.cpp's
`convert_hf_to_gguf.py`, found through LLAMA_CPP_DIR (a llama.cpp checkout, or
the `vendor/llama.cpp` of llama-cpp-python's sdist). See docs/gguf.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from models import reference_model  # noqa: E402

import dus.api  # noqa: E402
import dus.plan.gguf  # noqa: E402

GGML_F32 = 0  # ggml_type of the KV cache: float32, so an f32 model is compared without f16 rounding


def llama_cpp_logits(path, ids: list[int]) -> torch.Tensor:
    llm = llama_cpp.Llama(
        str(path),
        n_ctx=len(ids),
        n_batch=len(ids),
        logits_all=True,
        verbose=False,
        type_k=GGML_F32,
        type_v=GGML_F32,
        seed=0,
    )
    llm.eval(ids)
    return torch.tensor(np.asarray(llm.scores[: len(ids)]), dtype=torch.float32)


def compare(path, hf_model, ids: list[int]) -> dict[str, float]:
    """llama.cpp on `path` against transformers' `hf_model` on the same tokens."""
    cpp = llama_cpp_logits(path, ids)
    with torch.no_grad():
        ref = hf_model(torch.tensor([ids])).logits[0].float()
    target = torch.tensor(ids[1:])

    def ppl(logits):
        return torch.nn.functional.cross_entropy(logits[:-1], target).exp().item()

    return {
        "agreement": (cpp.argmax(-1) == ref.argmax(-1)).float().mean().item(),
        "ppl_ratio": ppl(cpp) / ppl(ref),
        "max_diff": (cpp - ref).abs().max().item(),
    }


# --- float32 GGUFs converted by llama.cpp's own converter from tiny random transformers models ----


@pytest.fixture(scope="module")
def converter() -> Path:
    root = os.environ.get("LLAMA_CPP_DIR")
    if not root or not (Path(root) / "convert_hf_to_gguf.py").is_file():
        pytest.skip("set LLAMA_CPP_DIR to a llama.cpp checkout (for convert_hf_to_gguf.py and gguf-py)")
    return Path(root)


@pytest.fixture(scope="module")
def tokenizer_dir(smollm2) -> Path:
    """convert_hf_to_gguf.py needs a tokenizer it knows: SmolLM2's (49,152 tokens), cached by the project."""
    return smollm2


def tiny_config(family: str):
    common = dict(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if family == "llama":
        return transformers.LlamaConfig(**common, num_hidden_layers=8, tie_word_embeddings=True)
    if family in ("qwen2", "qwen3"):
        return transformers.AutoConfig.for_model(family, **common, num_hidden_layers=4)
    # Gemma-3: every 6th layer full attention (5 and 11), a 16-token window so a short text crosses it.
    return transformers.Gemma3TextConfig(
        **common, num_hidden_layers=12, head_dim=16, query_pre_attn_scalar=16, sliding_window=16
    )


def converted(family: str, directory: Path, converter: Path, tokenizer_dir: Path):
    """(transformers model, its f32 GGUF written by convert_hf_to_gguf.py)."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(family)).eval()
    with torch.no_grad():  # default inits leave norms at constants
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf = directory / family
    model.save_pretrained(hf)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, hf)
    return model, convert(hf, directory / f"{family}.gguf", converter, family.startswith("qwen"))


# transformers 5 tokenizes a Qwen model type with its Qwen2 tokenizer class whatever tokenizer.json says, so the
# converter's pre-tokenizer check does not recognise SmolLM2's tokenizer there: name it. The tests feed token ids.
NAME_THE_PRE_TOKENIZER = """
import runpy, sys
sys.path.insert(0, sys.argv[1])
from conversion.base import TextModel
TextModel.get_vocab_base_pre = lambda self, tokenizer: "smollm"
script = sys.argv[1] + "/convert_hf_to_gguf.py"
sys.argv = [script] + sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def convert(hf: Path, out: Path, converter: Path, name_pre_tokenizer: bool = False) -> Path:
    """llama.cpp's own convert_hf_to_gguf.py, float32."""
    env = {**os.environ, "PYTHONPATH": str(converter / "gguf-py"), "HF_HUB_OFFLINE": "1"}
    script = (
        ["-c", NAME_THE_PRE_TOKENIZER, str(converter)]
        if name_pre_tokenizer
        else [str(converter / "convert_hf_to_gguf.py")]
    )
    done = subprocess.run(
        [sys.executable, *script, str(hf), "--outfile", str(out), "--outtype", "f32"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def random_ids(n: int) -> list[int]:
    return torch.randint(3, 49152, (n,), generator=torch.Generator().manual_seed(0)).tolist()


def test_f32_llama_grown_in_llama_cpp(tmp_path, converter, tokenizer_dir):
    model, source = converted("llama", tmp_path, converter, tokenizer_dir)
    grown = tmp_path / "grown.gguf"
    dus.api.build(str(source), grown, overlap=2)  # 8 -> 12 layers
    got = compare(grown, reference_model(model, list(range(6)) + list(range(2, 8))), random_ids(200))
    assert got["agreement"] >= 0.995, got
    assert got["max_diff"] < 0.02 and abs(got["ppl_ratio"] - 1) < 1e-3, got


def test_f32_gemma3_sliding_pattern_grown_in_llama_cpp(tmp_path, converter, tokenizer_dir, monkeypatch):
    """The plan moves Gemma-3's full-attention layers off every 6th index; the per-layer bool array
    dus writes makes llama.cpp attend as planned. Without it (the control) llama.cpp falls back to
    its period and the same check fails."""
    model, source = converted("gemma3", tmp_path, converter, tokenizer_dir)
    layers = list(range(8)) + list(range(4, 12))  # full attention at output 5, 9 and 15
    reference = reference_model(model, layers)
    ids = random_ids(200)  # > 12 windows of 16 tokens

    grown = tmp_path / "grown.gguf"
    dus.api.build(str(source), grown, layers="0:8,4:12")
    got = compare(grown, reference, ids)
    assert got["agreement"] >= 0.995, got
    assert got["max_diff"] < 0.02 and abs(got["ppl_ratio"] - 1) < 1e-3, got

    monkeypatch.setattr(dus.plan.gguf, "_sliding_window_pattern", lambda *args: None)
    periodic = tmp_path / "periodic.gguf"
    dus.api.build(str(source), periodic, layers="0:8,4:12")
    control = compare(periodic, reference, ids)
    assert control["agreement"] < 0.9 and control["max_diff"] > 0.1, control


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_upcycled_safetensors_convert_and_run_in_llama_cpp(family, tmp_path, converter, tokenizer_dir):
    """`dus upcycle` writes the Hub's per-expert layout (Mixtral, Qwen2-MoE, Qwen3-MoE): llama.cpp's converter
    accepts it and llama.cpp runs it as transformers does. Mixtral and Qwen3-MoE renormalise the chosen experts'
    weights there too, so llama.cpp computes the dense source's function; llama.cpp's Qwen2-MoE ignores
    `norm_topk_prob` (it never renormalises), so it computes the model transformers loads with the flag off."""
    model, _ = converted(family, tmp_path, converter, tokenizer_dir)
    moe = tmp_path / f"{family}-moe"
    dus.api.upcycle(str(tmp_path / family), moe, experts=4, top_k=2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, moe)
    gguf_file = convert(moe, tmp_path / f"{family}-moe.gguf", converter, family.startswith("qwen"))
    if family == "qwen2":
        model = transformers.AutoModelForCausalLM.from_pretrained(moe, norm_topk_prob=False, dtype=torch.float32)
    got = compare(gguf_file, model.eval(), random_ids(200))
    assert got["agreement"] >= 0.995, got
    assert got["max_diff"] < 0.02 and abs(got["ppl_ratio"] - 1) < 1e-3, got


# --- the real model: SmolLM2-135M-Instruct, 30 -> 44 layers ---------------------------------------

SMOLLM2_DUS8 = list(range(22)) + list(range(8, 30))  # what --overlap 8 plans


def pydoc_ids(tokenizer) -> list[int]:
    """1,000 tokens of English and Python (the stdlib's own help texts: offline, fixed per Python version)."""
    import pydoc_data.topics

    text = "".join(pydoc_data.topics.topics[k] for k in ("if", "while", "for", "try", "with", "function", "class"))
    ids = tokenizer(text)["input_ids"][:1000]
    assert len(ids) == 1000
    return ids


@pytest.mark.real_model
def test_f32_smollm2_grown_in_llama_cpp(tmp_path, converter, tokenizer_dir):
    """llama.cpp's converter makes the f32 source, dus grows it: llama.cpp must run it like transformers."""
    env = {**os.environ, "PYTHONPATH": str(converter / "gguf-py"), "HF_HUB_OFFLINE": "1"}
    source = tmp_path / "smollm2-f32.gguf"
    done = subprocess.run(
        [
            sys.executable,
            str(converter / "convert_hf_to_gguf.py"),
            str(tokenizer_dir),
            "--outfile",
            str(source),
            "--outtype",
            "f32",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    grown = tmp_path / "grown.gguf"
    dus.api.build(str(source), grown, overlap=8)
    source.unlink()  # 0.5 GB
    model = transformers.AutoModelForCausalLM.from_pretrained(tokenizer_dir, dtype=torch.float32).eval()
    ids = pydoc_ids(transformers.AutoTokenizer.from_pretrained(tokenizer_dir))
    got = compare(grown, reference_model(model, SMOLLM2_DUS8), ids)
    assert got["agreement"] >= 0.995 and abs(got["ppl_ratio"] - 1) < 1e-3, got


@pytest.mark.real_model
def test_q4_1_smollm2_grown_in_llama_cpp(tmp_path, smollm2_gguf):
    """Quantized kernels differ from de-quantized float32 (llama.cpp also rounds activations to 8
    bits for Q4_1), more so the deeper the model, so the grown model is held to its source: top-1
    agreement with its transformers reference at least the source's minus one point, perplexity off
    by at most the source's own deviation plus 0.5 % (on this text the source alone is 0.6 % off)."""
    source = smollm2_gguf
    grown = tmp_path / "grown.gguf"
    dus.api.build(str(source), grown, overlap=8)
    source_hf = transformers.AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name).eval()
    ids = pydoc_ids(transformers.AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name))

    base = compare(source, source_hf, ids)
    got = compare(grown, reference_model(source_hf, SMOLLM2_DUS8), ids)
    assert got["agreement"] >= base["agreement"] - 0.01, (base, got)
    assert abs(got["ppl_ratio"] - 1) <= abs(base["ppl_ratio"] - 1) + 0.005, (base, got)


@pytest.mark.real_model
def test_q4_1_smollm2_upcycled_in_llama_cpp(tmp_path, smollm2_gguf):
    """The copy-upcycled GGUF (8 experts, top 2: every expert the dense MLP's blocks, the router F32 zeros) runs in
    llama.cpp as the dense source's function: its top-1 agreement with the dense source's transformers reference is
    at least the source's own minus one point (the criterion of `dus upcycle` for GGUF), and it agrees with the
    dense GGUF run in llama.cpp on 99 % of positions (the expert kernels sum the same blocks in another order)."""
    source = smollm2_gguf
    upcycled = tmp_path / "moe.gguf"
    dus.api.upcycle(str(source), upcycled, experts=8, top_k=2)
    source_hf = transformers.AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name).eval()
    ids = pydoc_ids(transformers.AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name))

    base = compare(source, source_hf, ids)
    got = compare(upcycled, source_hf, ids)
    assert got["agreement"] >= base["agreement"] - 0.01, (base, got)
    assert abs(got["ppl_ratio"] - 1) <= abs(base["ppl_ratio"] - 1) + 0.005, (base, got)
    dense, moe = (llama_cpp_logits(path, ids).argmax(-1) for path in (source, upcycled))
    assert (dense == moe).float().mean().item() >= 0.99
