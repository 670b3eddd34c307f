"""Throughput, model FLOPs utilization, and the metrics log (stdout, metrics.jsonl, TensorBoard).

MFU = achieved model FLOPs / peak dense bf16 FLOPs of the GPU, with
FLOPs/token = 6 * non-embedding params + 12 * layers * hidden * seq_len
(the PaLM appendix-B count, as torchtitan uses; recomputation is not counted).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

# Dense bf16 tensor-core peak per GPU (no sparsity), by device-name substring; longest match wins.
PEAK_BF16_FLOPS = {
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "H200": 989e12,
    "GH200": 989e12,
    "H800": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    matches = [key for key in PEAK_BF16_FLOPS if key in name]
    return PEAK_BF16_FLOPS[max(matches, key=len)] if matches else None


def flops_per_token(config, non_embedding_params: int, seq_len: int) -> float:
    text = config.get_text_config()
    return 6 * non_embedding_params + 12 * text.num_hidden_layers * text.hidden_size * seq_len


def format_record(record: dict, max_steps: int) -> str:
    parts = [f"step {record['step']}/{max_steps}"]
    for key, fmt in (
        ("loss", "loss {:.4f}"),
        ("eval_loss", "eval_loss {:.4f}"),
        ("eval_ppl", "eval_ppl {:.2f}"),
        ("lr", "lr {:.2e}"),
        ("grad_norm", "grad_norm {:.3f}"),
        ("tokens_per_s", "{:,.0f} tok/s"),
        ("mfu", "mfu {:.1%}"),
    ):
        if record.get(key) is not None:
            parts.append(fmt.format(record[key]))
    return " | ".join(parts)


def quiet_libraries(show: bool) -> None:
    """Library progress bars (tokenizing, loading weights) only on rank 0 at a terminal."""
    if not (show and sys.stderr.isatty()):
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()


def truncate_jsonl(path: Path, step: int | None) -> None:
    """Start a log afresh (step None), or keep only its records up to `step` so a resumed run reads as one."""
    if step is None or not path.exists():
        path.write_text("")
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


class MetricsLog:
    """Rank 0 only: one line per record on stdout, one JSON object per line in metrics.jsonl."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, max_steps: int, resume_step: int | None):
        self.enabled, self.max_steps, self.tb = enabled, max_steps, None
        self.path = out / "metrics.jsonl"
        if not enabled:
            return
        truncate_jsonl(self.path, resume_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step)
        from dus.bars import CountBar

        self.bar = CountBar("training", max_steps, completed=resume_step or 0)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record["step"])
        self.print(format_record(record, self.max_steps))

    def advance(self) -> None:
        if self.enabled:
            self.bar.advance()

    def print(self, line: str) -> None:
        if self.enabled:
            print(line, flush=True)  # above the progress bar at a terminal

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            if self.tb:
                self.tb.close()
