"""dus.load_grown: an in-memory grown model sharing the source's tensors is the built model, bit for bit."""

import pytest
import torch
import transformers
from models import ARCHITECTURES, VOCAB, save_model

import dus.api
from dus.errors import InputError
from dus.grown import load_grown, parameter_bytes

PLAN = "0:3,1:4"  # layers 1 and 2 repeated: 0 1 2 1 2 3
FAST = ("llama", "qwen2", "gemma3_text")  # layer_types remapped; the rest run with the slow tests


def _assert_same_as_built(src_dir, out_dir, spec=PLAN):
    dus.api.build(str(src_dir), out_dir, layers=spec)
    built = transformers.AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    grown = load_grown(str(src_dir), spec, device="cpu", dtype="float32")
    assert type(grown) is type(built)

    def settings(model):
        return {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}

    assert settings(grown) == settings(built)
    ids = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(grown(ids).logits, built(ids).logits)
    kwargs = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert torch.equal(grown.generate(ids[:1], **kwargs), built.generate(ids[:1], **kwargs))  # with a KV cache
    # each position keeps its own cache slot, as a fresh construction numbers it
    idx = [m.layer_idx for m in grown.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    assert idx == [m.layer_idx for m in built.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    return grown


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a in FAST])
def test_grown_equals_built(arch, tmp_path):
    source = save_model(arch, tmp_path / "src")
    grown = _assert_same_as_built(tmp_path / "src", tmp_path / "out")
    # no extra weight memory: the distinct storages are the source's, and repeats are the same objects
    assert parameter_bytes(grown) == parameter_bytes(source)
    layers = grown.model.layers
    assert layers[1].self_attn.q_proj.weight is layers[3].self_attn.q_proj.weight
    assert layers[1].self_attn is not layers[3].self_attn


@pytest.mark.slow
@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a not in FAST])
def test_grown_equals_built_every_architecture(arch, tmp_path):
    source = save_model(arch, tmp_path / "src")
    grown = _assert_same_as_built(tmp_path / "src", tmp_path / "out", "0:2,0:4")  # the first layers twice
    assert parameter_bytes(grown) == parameter_bytes(source)


def test_grown_refuses_computed_layers(llama_source, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "layers:\n  - {range: [0, 4]}\n  - {layer: 3, scale: {modules: [self_attn.o_proj], factor: 0.5}}\n"
    )
    with pytest.raises(InputError, match="cannot represent a computed layer"):
        load_grown(str(llama_source), None, config=str(recipe))


def test_load_grown_is_in_the_package_api():
    import dus

    assert dus.load_grown is load_grown


def test_grown_refuses_gguf():
    with pytest.raises(InputError, match="safetensors source"):
        load_grown("model.gguf", "0:2")


def test_grown_refuses_what_the_build_refuses(llama_source):
    with pytest.raises(InputError):
        load_grown(str(llama_source), "0:9")  # past the source's 4 layers


@pytest.mark.real_model
@pytest.mark.slow
def test_grown_smollm2_equals_built(smollm2, tmp_path):
    from dus.runtime import load_model

    spec = "0:22,8:30"
    dus.api.build(str(smollm2), tmp_path / "out", layers=spec)
    built, _ = load_model(tmp_path / "out", "cpu", "float32")
    grown = load_grown(str(smollm2), spec, device="cpu", dtype="float32")
    source, _ = load_model(smollm2, "cpu", "float32")
    assert parameter_bytes(grown) == parameter_bytes(source) < parameter_bytes(built)
    ids = torch.tensor([[1, 504, 3458, 282, 4600, 314, 260, 1345, 30]])
    with torch.no_grad():
        assert torch.equal(grown(ids).logits, built(ids).logits)
    kwargs = dict(max_new_tokens=16, min_new_tokens=16, do_sample=False)
    assert torch.equal(grown.generate(ids, **kwargs), built.generate(ids, **kwargs))
