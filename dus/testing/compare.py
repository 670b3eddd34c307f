"""Base vs up-scaled, side by side: a greedy chat reply and perplexity on real text."""

from __future__ import annotations

PROMPT = "What is the capital of France? Answer in one sentence."


def load(model_dir):
    """float32 on the CPU, so both models' numbers compare on any machine."""
    from dus.runtime import load_model, load_tokenizer

    return load_model(model_dir, "cpu", "float32")[0], load_tokenizer(model_dir)


def chat_reply(model, tokenizer, prompt: str = PROMPT, max_new_tokens: int = 40) -> str:
    """Greedy, through the same prompt rendering as `dus chat`."""
    from dus.instruct.chat import generate

    reply = generate(model, tokenizer, [{"role": "user", "content": prompt}], max_new_tokens, stream=False)
    return reply.text.strip()


def compare(base_dir, upscaled_dir, prompt: str = PROMPT, max_tokens: int = 4096, window: int = 512) -> dict:
    from dus.eval.perplexity import perplexity, reference_text

    text = reference_text()
    results = {}
    for name, directory in (("base", base_dir), ("upscaled", upscaled_dir)):
        model, tokenizer = load(directory)
        results[name] = {
            "layers": model.config.num_hidden_layers,
            "parameters": sum(p.numel() for p in model.parameters()),
            "reply": chat_reply(model, tokenizer, prompt),
            **perplexity(model, tokenizer, text, max_tokens=max_tokens, window=window),
        }
        del model
    return results


def main() -> None:
    """python -m dus.testing.compare BASE UPSCALED: print both replies and perplexities."""
    import json
    import sys

    results = compare(sys.argv[1], sys.argv[2])
    for name, r in results.items():
        print(f"{name:>9}: {r['layers']} layers, {r['parameters']:,} parameters, "
              f"perplexity {r['perplexity']:.2f} on {r['tokens']} tokens of pydoc_data.topics")
        print(f"{'':>9}  reply to {PROMPT!r}: {r['reply']!r}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
