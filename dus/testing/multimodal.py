"""The multimodal matrix: every image-text-to-text model of transformers grown on its language stack.

    python scripts/architectures.py --multimodal              # all, writes their section of docs/architectures.md
    python scripts/architectures.py --multimodal llava gemma3 # some, printed only

A tiny random model of each `MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES` entry (every tower 6 layers, every
tensor perturbed) is built with `dus build --overlap 2 --stack PREFIX:CONFIG` on its language stack, loaded with
`AutoModelForImageTextToText`, and compared with the in-memory reference (dus/testing/reference.py): text-only
logits and cached greedy generation, then logits with an image where the tiny model takes a generic one
(pixel values of its vision tower's size, and as many image tokens as the tower makes features).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dus.testing.architectures import OVERLAP, VOCAB, Row, _line, grown_and_compared, tiny_config

TEXT_WORDS = ("language_model", "text_model", "llm", "lm.", "decoder", "text")
TOWER_WORDS = (
    "vision",
    "visual",
    "image",
    "audio",
    "vqmodel",
    "vit",
    "encoder",
    "tower",
    "projector",
    "perceiver",
    "sam_model",
)


# M-RoPE splits each head's rotary half in three (time, height, width): sized to the tiny head_dim 8
MROPE = {"text_config": {"rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1]}}}
# What a few configs need beyond dus.testing.architectures' TINY and EXTRA to be valid.
EXTRA = {
    **{
        t: MROPE
        for t in (
            "qwen2_vl",
            "qwen2_5_vl",
            "qwen3_vl",
            "qwen3_vl_moe",
            "qwen2_5_omni_thinker",
            "qwen3_omni_moe_thinker",
            "paddleocr_vl",
            "ernie4_5_vl_moe",
        )
    },
    "mllama": {"text_config": {"cross_attention_layers": [1, 4]}},  # its default holds layers 3..38
}


def all_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return list(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


@dataclass(frozen=True)
class StackRow(Row):
    def run(self, workdir: Path) -> tuple[str, str]:
        return check_stack(self.model_type, workdir, **dict(self.extra))


# As for the causal LMs: a plan users build beside the tiny --overlap 2 one, (label, config fields) per type.
VARIANTS: dict[str, list[tuple[str, dict]]] = {}


def rows(model_types: list[str]) -> list[Row]:
    return [
        StackRow(t, label, tuple(sorted({**EXTRA.get(t, {}), **extra}.items())))
        for t in model_types
        for label, extra in [("", {}), *VARIANTS.get(t, [])]
    ]


def tiny_multimodal(model_type: str, **extra):
    """A seeded tiny random model, its special tokens (image, begin/end of image, ...) moved inside the tiny
    vocabulary, above the ids the test's text uses."""
    import torch
    import transformers

    config = tiny_config(model_type, **extra)
    free = iter(range(VOCAB - 1, VOCAB - 16, -1))
    for part in {id(c): c for c in (config, config.get_text_config())}.values():
        for name, value in list(vars(part).items()):
            if name.endswith(("_token_id", "_token_index")) and type(value) is int and value >= VOCAB:
                setattr(part, name, next(free))
    torch.manual_seed(0)
    model = transformers.AutoModelForImageTextToText.from_config(config).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def check_stack(model_type: str, workdir: Path, **extra) -> tuple[str, str]:
    import transformers

    try:
        model = tiny_multimodal(model_type, **extra)
        model.save_pretrained(workdir / "src")
    except Exception as e:  # noqa: BLE001 - any failure here is the tiny model's, not dus's
        return "not testable here", f"cannot make a tiny model: {_line(e)}"
    try:
        module, stack = language_stack(model, workdir / "src")
    except Exception as e:  # noqa: BLE001 - the harness cannot tell the stack: no verdict on dus
        return "not testable here", f"cannot find its language stack: {_line(e)}"
    return grown_and_compared(
        model,
        workdir,
        transformers.AutoModelForImageTextToText,
        {"overlap": OVERLAP, "stack": stack},
        lambda record: (module, None),
        image_inputs,
    )


def language_stack(model, directory: Path) -> tuple[str, str]:
    """(module path of the text decoder's layer list, the --stack PREFIX:CONFIG naming it in the checkpoint)."""
    import torch

    from dus.read.architecture import numbered_prefixes
    from dus.read.source import local_tensors
    from dus.runtime import num_layers

    n = num_layers(model.config)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    inside = {id(m) for m in decoder.modules()}
    modules = [
        name
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.ModuleList) and len(m) == n and id(m) in inside
    ]
    if not modules:
        raise ValueError(f"no list of {n} text layers in its decoder")
    found = [p for p, indices in numbered_prefixes(local_tensors(directory) or {}).items() if indices == set(range(n))]
    prefix = _text_prefix(found, modules[0])
    text = model.config.get_text_config()
    key = next((k for k, v in vars(model.config).items() if v is text), None)
    return modules[0], prefix + (f":{key}" if key else "")


def _text_prefix(found: list[str], module: str) -> str:
    if module + "." in found:
        return module + "."
    for words, want in ((TEXT_WORDS, True), (TOWER_WORDS, False)):
        picked = [p for p in found if any(w in p for w in words) == want]
        if len(picked) == 1:
            return picked[0]
    raise ValueError(f"cannot tell the language stack among the checkpoint's stacks ({', '.join(found) or 'none'})")


def image_inputs(model) -> dict:
    """Pixel values of the vision tower's size, and the text with as many image tokens as it makes features;
    the source model must run on them (else the row says text only)."""
    import inspect

    import torch

    config = model.config
    vision = config.vision_config
    token = next(
        getattr(config, k) for k in ("image_token_id", "image_token_index") if getattr(config, k, None) is not None
    )
    size = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
    pixels = torch.randn(1, getattr(vision, "num_channels", 3), size, size, generator=torch.Generator().manual_seed(2))
    sized = {"image_sizes": torch.tensor([[size, size]])}  # LLaVA-Next, Mistral-3: the image's own size
    sized = sized if "image_sizes" in inspect.signature(model.get_image_features).parameters else {}
    with torch.no_grad():
        features = model.get_image_features(pixel_values=pixels, **sized)
    features = getattr(features, "pooler_output", features)
    count = sum(f.shape[:-1].numel() for f in (features if isinstance(features, (list, tuple)) else [features]))
    text = torch.randint(3, VOCAB - 16, (1, 6), generator=torch.Generator().manual_seed(3))
    ids = torch.cat([text[:, :2], torch.full((1, count), token), text[:, 2:]], dim=1)
    given = {"input_ids": ids, "pixel_values": pixels, **sized}
    with torch.no_grad():
        model(**given)
    return given
