"""A .gguf file as a transformers model and tokenizer (`gguf_file=`), so `dus eval --perplexity` and
`dus chat` check a grown GGUF without llama.cpp. transformers dequantizes every tensor to the dtype
asked for: the memory is that of the unquantized model."""

from __future__ import annotations

from pathlib import Path

from dus.errors import InputError
from dus.read.gguf import SPLIT_NAME


def check_gguf_file(ref: str | Path) -> Path:
    path = Path(ref).expanduser()
    if not path.is_file():
        raise InputError(f"{ref}: does not exist")
    if SPLIT_NAME.match(path.name):
        raise InputError(
            f"{ref}: one file of a split GGUF set: transformers reads a single .gguf file (build it "
            "without --shard-size, or join the set with llama.cpp's gguf-split --merge)"
        )
    return path


def load_gguf(ref: str | Path, what: str, **kwargs):
    """`what`: "model" or "tokenizer", read from the .gguf file `ref` through transformers."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dus.quiet import quiet_tqdm

    quiet_tqdm(gguf_utils)  # "Converting and de-quantizing GGUF tensors" unless --verbose
    path = check_gguf_file(ref)
    loader = AutoModelForCausalLM if what == "model" else AutoTokenizer
    try:
        return loader.from_pretrained(path.parent, gguf_file=path.name, **kwargs)
    except ImportError as e:
        raise InputError(f"reading a .gguf needs the `gguf` package (pip install 'dus[gguf]'): {e}") from None
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise InputError(
            f"cannot load the {what} from {ref} through transformers: {' '.join(str(e).split())[:300]}"
        ) from None
