"""Mean per-token negative log-likelihood of many short texts, batched."""

from __future__ import annotations


def mean_nll(model, tokenizer, texts: list[str], batch_size: int = 32, max_length: int | None = None) -> list[float]:
    """For each text, the mean NLL (nats) of its tokens after the first, as a causal LM loss reports it.

    Texts are tokenized with the tokenizer's special tokens (BOS) and right
    padded; padding is masked out, so a text scores the same alone or in a batch.
    """
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad = 0 if pad is None else pad
    out: list[float] = []
    for start in range(0, len(texts), batch_size):
        ids = [
            tokenizer(t, truncation=max_length is not None, max_length=max_length)["input_ids"]
            for t in texts[start : start + batch_size]
        ]
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=model.device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=model.device)
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
        keep = mask[:, 1:].float()
        out += ((nll * keep).sum(1) / keep.sum(1).clamp(min=1)).tolist()
    return out
