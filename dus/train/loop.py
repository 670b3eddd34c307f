"""The trainer: the same loop for one CPU process and for many FSDP2 ranks under torchrun.

Per step: `grad_accum` micro-batches of packed blocks, mean causal-LM loss,
global grad-norm clipping, AdamW, warmup + cosine schedule. Around it: eval at
step 0 / every `eval_every` / the end, DCP checkpoints every `save_every` and
at the end (with `save_every` 0 only when `stop_after` leaves early), metrics
every `log_every`, and the export of a plain Hugging Face model directory into
OUTPUT once the schedule is done.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
)
from torch.distributed.tensor import DTensor
from transformers import (
    AutoModelForCausalLM,
    get_cosine_with_min_lr_schedule_with_warmup_lr_rate,
    set_seed,
)

from dus.core.publish import atomic_model_files
from dus.errors import InputError
from dus.manifest import stage_manifest, write_manifest
from dus.runtime import decoder_layers, num_layers, resolve_dtype
from dus.train.advice import (
    SourceTensors,
    checkpoint_bytes,
    checkpoint_warning,
    export_warning,
    rounded_away,
    warmup_warning,
)
from dus.train.checkpoint import RECORD, Checkpointer, malformed_state, rng_state, set_rng_state
from dus.train.config import PretrainConfig
from dus.train.data import block_hash, build_data
from dus.train.freeze import apply_freeze, trainable_layers
from dus.train.freeze_width import freeze_source_width, keep_fixed, width_record
from dus.train.metrics import (
    MetricsLog,
    flops_per_token,
    peak_flops,
    quiet_libraries,
    truncate_jsonl,
)
from dus.train.model import (
    build_model,
    load_hf_config,
    load_training_tokenizer,
    max_positions,
    param_counts,
    prepare_model,
)
from dus.train.moe import PARTS, MoeTraining, freeze_parts, is_moe
from dus.train.parallel import (
    Dist,
    all_reduce_sum,
    barrier,
    broadcast_object,
    close_distributed,
    init_distributed,
    sharding_summary,
)
from dus.write.card import stage_card


def pretrain(cfg: PretrainConfig | dict) -> dict:
    """Continued pretraining of `cfg.model` on `cfg.data`; returns the run summary (also in OUTPUT/run.json)."""
    cfg = PretrainConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg.validate()
    d = init_distributed(cfg.device)
    try:
        return Trainer(cfg, d).run()
    finally:
        close_distributed()


def cosine_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float):
    """Linear warmup from lr/warmup to lr over `warmup` steps (no step at lr 0), then cosine decay
    reaching lr * min_ratio at the last of `total` steps."""
    return get_cosine_with_min_lr_schedule_with_warmup_lr_rate(
        optimizer, warmup, total, min_lr_rate=min_ratio, warmup_lr_rate=1 / warmup if warmup else None
    )


def build_optimizer(model: torch.nn.Module, cfg: PretrainConfig, device: torch.device) -> torch.optim.AdamW:
    """Weight decay on matrices only; frozen parameters are left out, so they get no state."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        fused=True if device.type == "cuda" else None,
    )


def forward_loss(model, batch: torch.Tensor, d: Dist, dtype: torch.dtype) -> torch.Tensor:
    """Mean next-token loss of a batch of packed blocks. One process keeps fp32 weights and autocasts;
    FSDP2 casts through its MixedPrecisionPolicy instead."""
    batch = batch.to(d.device, non_blocking=True)
    cast = d.world == 1 and dtype != torch.float32
    with torch.autocast(d.device.type, dtype=dtype) if cast else contextlib.nullcontext():
        return model(input_ids=batch, labels=batch, use_cache=False).loss


def train_step(
    model, optimizer, scheduler, batches: list[torch.Tensor], d: Dist, dtype: torch.dtype, grad_clip: float
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One optimizer step over gradient-accumulated micro-batches: (mean loss, grad norm, lr used)."""
    total = torch.zeros((), device=d.device)
    for batch in batches:
        loss = forward_loss(model, batch, d, dtype)
        (loss / len(batches)).backward()
        total += loss.detach()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total / len(batches), norm, lr


class Trainer:
    def __init__(self, cfg: PretrainConfig, d: Dist):
        self.cfg, self.d, self.out = cfg, d, Path(cfg.output)
        quiet_libraries(d.is_main)
        self.hf_config = load_hf_config(cfg.model)
        self._check_seq_len()
        self.train_layers = trainable_layers(cfg.freeze, cfg.model, num_layers(self.hf_config))
        self.ckpt = Checkpointer(self.out / "checkpoints", d, cfg.keep_checkpoints)
        resume_from = self._checkpoint_to_resume()
        self.tokenizer = load_training_tokenizer(cfg.model)
        self.data = build_data(cfg, self.tokenizer, d)
        if d.is_main:  # only once the data is read: bad input leaves no OUTPUT behind
            self.out.mkdir(parents=True, exist_ok=True)
        self.max_steps = cfg.total_steps(d.world, self.data.steps_per_epoch)
        self.tokens_per_step = cfg.seq_len * cfg.batch_size * cfg.grad_accum * d.world

        set_seed((cfg.seed + d.rank) % 2**32)  # numpy takes seeds below 2**32
        self.dtype = resolve_dtype(cfg.dtype, str(d.device))
        model, source = build_model(cfg.model, d)
        self.model = prepare_model(model, source, d, self.dtype, cfg.grad_checkpointing, cfg.compile)
        del model, source
        apply_freeze(self.model, decoder_layers(self.model), self.train_layers)
        self.moe = self._moe()
        width = width_record(cfg.model) if cfg.freeze == "original" else None
        kept = freeze_source_width(self.model, width, d.world) if width else []
        self.optimizer = build_optimizer(self.model, cfg, d.device)
        keep_fixed(self.optimizer, kept)
        self.scheduler = cosine_schedule(self.optimizer, cfg.warmup_steps, self.max_steps, cfg.min_lr_ratio)
        self.step = self.tokens = 0
        if resume_from:
            self._resume(resume_from)

        self.counts = param_counts(self.model)
        self.flops_per_token = flops_per_token(self.hf_config, self.counts["non_embedding"], cfg.seq_len)
        self.peak = peak_flops(d.device)
        self.log = MetricsLog(self.out, d.is_main, cfg.tensorboard, self.max_steps, self.step if resume_from else None)
        self.samples = self._open_samples_log(resume_from)
        self.info = self._run_info(resume_from)
        self._write_info()
        self.timed_s = self.timed_tokens = 0.0
        self._lap_at = (time.perf_counter(), 0)

    # --- setup -------------------------------------------------------------------------------
    def _check_seq_len(self) -> None:
        limit = max_positions(self.hf_config)
        if limit and self.cfg.seq_len > limit:
            raise InputError(
                f"--seq-len {self.cfg.seq_len} is larger than the model's max_position_embeddings ({limit})"
            )

    def _moe(self) -> MoeTraining | None:
        """A mixture of experts: its aux loss, tokens per expert, --freeze router|experts (dus/train/moe.py)."""
        if not is_moe(self.hf_config):
            if self.cfg.freeze in PARTS or self.cfg.router_aux_loss_coef is not None:
                raise InputError(
                    f"{self.cfg.model} is not a mixture of experts: --freeze {self.cfg.freeze} and "
                    "--router-aux-loss-coef are for one"
                )
            return None
        if self.cfg.freeze in PARTS:
            freeze_parts(self.model, self.cfg.freeze)
        return MoeTraining(self.model, self.cfg.router_aux_loss_coef)

    def _checkpoint_to_resume(self) -> Path | None:
        # rank 0 decides, so all ranks agree
        latest, unrecorded = broadcast_object((self.ckpt.latest(), self.ckpt.unrecorded()), self.d)
        if (latest or unrecorded) and not self.cfg.resume:
            raise InputError(
                f"{self.out} already holds checkpoints: pass --resume to continue, or choose a new --output"
            )
        if self.cfg.resume and not latest and unrecorded:
            raise InputError(
                f"{unrecorded} has no {RECORD} (an interrupted save, or one by an older dus that "
                "pickled its state): it cannot be resumed safely; move it away or choose a new --output"
            )
        if self.cfg.resume and not latest and self.d.is_main:
            print(f"no checkpoint in {self.ckpt.root}: starting from step 0", flush=True)
        if latest:
            self.ckpt.check(latest)  # every file against its record, before anything is built or loaded
        return latest

    def _layout(self) -> dict:
        """What the data position depends on; a resume must match it."""
        c = self.cfg
        return {
            "world": self.d.world,
            "batch_size": c.batch_size,
            "seq_len": c.seq_len,
            "grad_accum": c.grad_accum,
            "streaming": c.streaming,
            "seed": c.seed,
        }

    def _resume(self, path: Path) -> None:
        saved = self.ckpt.load_shared(path).get("layout")
        if saved != self._layout():
            saved = saved if isinstance(saved, dict) else {}
            diff = ", ".join(f"{k} {saved.get(k)} (now {v})" for k, v in self._layout().items() if saved.get(k) != v)
            raise InputError(f"{path} was written with {diff}: resume with the same layout")
        shared, mine = self.ckpt.load(path, self.model, self.optimizer)
        with malformed_state(path):
            if set(shared["scheduler"]) != set(self.scheduler.state_dict()):
                raise KeyError("the scheduler state's keys differ")
            self.scheduler.load_state_dict(shared["scheduler"])
            self.step, self.tokens = int(shared["step"]), int(shared["tokens"])
            self.data.train.load_state_dict(mine["data"])
            set_rng_state(mine["rng"])

    def _open_samples_log(self, resumed: Path | None):
        if not self.cfg.log_samples:
            return None
        path = self.out / f"samples-rank{self.d.rank}.jsonl"
        barrier(self.d)  # the output directory exists
        truncate_jsonl(path, self.step if resumed else None)
        return path.open("a")

    def _run_info(self, resumed: Path | None) -> dict:
        return {
            "config": asdict(self.cfg),
            "world_size": self.d.world,
            "device": str(self.d.device),
            "compute_dtype": str(self.dtype).removeprefix("torch."),
            "max_steps": self.max_steps,
            "tokens_per_step": self.tokens_per_step,
            "params": self.counts,
            "trained_layers": "all" if self.train_layers is None else self.train_layers,
            "sharding": sharding_summary(self.model),
            "resumed_from": str(resumed) if resumed else None,
        }

    def _write_info(self) -> None:
        if self.d.is_main:
            (self.out / "run.json").write_text(json.dumps(self.info, indent=2) + "\n")

    # --- the loop ----------------------------------------------------------------------------
    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        batches = [self.data.train.next_batch() for _ in range(self.cfg.grad_accum)]
        if self.samples:
            hashes = [block_hash(block) for batch in batches for block in batch]
            self.samples.write(json.dumps({"step": self.step + 1, "hashes": hashes}) + "\n")
        return train_step(self.model, self.optimizer, self.scheduler, batches, self.d, self.dtype, self.cfg.grad_clip)

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.d.device)
        with self.moe.language_model_loss() if self.moe else contextlib.nullcontext():
            for batch in self.data.eval:
                n = batch.shape[0] * (batch.shape[1] - 1)  # predicted tokens
                loss = forward_loss(self.model, batch, self.d, self.dtype)
                total += torch.stack([loss.double() * n, total.new_tensor(n)])
        all_reduce_sum(total, self.d)
        self.model.train()
        loss = (total[0] / total[1]).item()
        return {"step": self.step, "eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0))}

    def _lap(self, count: bool = True) -> None:
        """Time spent training since the last lap; eval, checkpoints and the first (warm-up) step are not counted."""
        if self.d.device.type == "cuda":
            torch.cuda.synchronize()
        now, (then, tokens) = time.perf_counter(), self._lap_at
        if count:
            self.timed_s += now - then
            self.timed_tokens += self.tokens - tokens
        self._lap_at = (now, self.tokens)

    def _throughput(self, seconds: float, tokens: float) -> dict:
        tps = tokens / seconds if seconds > 0 and tokens > 0 else None
        mfu = tps / self.d.world * self.flops_per_token / self.peak if tps and self.peak else None
        return {"tokens_per_s": tps, "mfu": mfu}

    def _train_record(self, loss: torch.Tensor, norm: torch.Tensor, lr: float, since: tuple[float, float]) -> dict:
        loss = all_reduce_sum(loss.detach().clone(), self.d) / self.d.world
        self._lap()
        record = {
            "step": self.step,
            "loss": loss.item(),
            "lr": lr,
            "grad_norm": norm.item(),
            "tokens": self.tokens,
            **self._throughput(self.timed_s - since[0], self.timed_tokens - since[1]),
        }
        if self.moe:
            record.update(self.moe.record(lambda t: all_reduce_sum(t, self.d)))
        if self.d.device.type == "cuda":
            record["max_memory_gib"] = torch.cuda.max_memory_allocated(self.d.device) / 2**30
        return record

    def _between_steps(self, fn) -> object:
        self._lap()
        result = fn()
        self._lap(count=False)
        return result

    def run(self) -> dict:
        cfg, start = self.cfg, self.step
        last = min(self.max_steps, cfg.stop_after) if cfg.stop_after > start else self.max_steps
        self.log.print(self._banner(start, last))
        self._warn_short_run(start, last)
        evals = []
        if self.data.eval and start == 0:  # the starting point: how much did the surgery cost?
            evals.append(self.evaluate())
            self.log.log(evals[-1])
        self.model.train()
        self._lap(count=False)
        since, record = (0.0, 0.0), {}
        while self.step < last:
            loss, norm, lr = self.train_step()
            self.step += 1
            self.tokens += self.tokens_per_step
            self.log.advance()
            if self.step == start + 1:
                self._lap(count=False)  # warm-up: compilation, allocator, caches
            if self.step % cfg.log_every == 0 or self.step == last:
                record = self._train_record(loss, norm, lr, since)
                since = (self.timed_s, self.timed_tokens)
                self.log.log(record)
            if self.data.eval and (self.step % cfg.eval_every == 0 or self.step == self.max_steps):
                evals.append(self._between_steps(self.evaluate))
                self.log.log(evals[-1])
            if self._save_due(last):
                path = self._between_steps(self._save)
                self.log.print(f"saved checkpoint {path}")
        return self._finish(record, evals)

    def _banner(self, start: int, last: int) -> str:
        c, n = self.counts, len(self.train_layers) if self.train_layers is not None else "all"
        return (
            f"pretraining {self.cfg.model}: {_count(c['total'])} params, {_count(c['trainable'])} trainable "
            f"({n} layers), {self.d.world} x {self.d.device.type}, {self.info['compute_dtype']}, "
            f"steps {start}->{last} of {self.max_steps}, {self.tokens_per_step:,} tokens/step "
            f"({(last - start) * self.tokens_per_step:,} tokens)"
        )

    def _warn_short_run(self, start: int, last: int) -> None:
        if not self.d.is_main or start:
            return
        cfg = self.cfg
        last_lr = cfg.lr * self.scheduler.lr_lambdas[0](self.max_steps - 1)
        final = bool(cfg.save_every) and cfg.final_checkpoint and last == self.max_steps
        for line in (
            warmup_warning(self.max_steps, cfg.warmup_steps, cfg.lr, last_lr),
            checkpoint_warning(last, checkpoint_bytes(self.model), final),
        ):
            if line:
                print(line, file=sys.stderr, flush=True)

    def _save_due(self, last: int) -> bool:
        return save_due(self.step, last, self.max_steps, self.cfg.save_every, self.cfg.final_checkpoint)

    def _save(self) -> Path:
        shared = {
            "step": self.step,
            "tokens": self.tokens,
            "scheduler": self.scheduler.state_dict(),
            "layout": self._layout(),
        }
        mine = {"data": self.data.train.state_dict(), "rng": rng_state()}
        if self.samples:
            self.samples.flush()
        return self.ckpt.save(self.step, self.model, self.optimizer, shared, mine)

    def _finish(self, record: dict, evals: list[dict]) -> dict:
        done = self.step >= self.max_steps
        summary = {
            "step": self.step,
            "max_steps": self.max_steps,
            "tokens": self.tokens,
            "finished": done,
            **self._throughput(self.timed_s, self.timed_tokens),
            "loss": record.get("loss"),
            "eval_loss": evals[-1]["eval_loss"] if evals else None,
            "eval_ppl": evals[-1]["eval_ppl"] if evals else None,
        }
        summary["tokens_per_s_per_device"] = summary["tokens_per_s"] / self.d.world if summary["tokens_per_s"] else None
        if self.samples:
            self.samples.close()
        if done:
            self._export()
        self.info["result"] = summary
        self._write_info()
        self.log.print(_summary_line(summary, self.out))
        self.log.close()
        return summary

    def _export(self) -> None:
        """Gather full weights to rank 0 and write a Hugging Face directory into OUTPUT."""
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.d.is_main:
            export_hf(full, self.cfg.model, self.out, self.tokenizer, self.cfg)
        barrier(self.d)


def save_due(step: int, last: int, max_steps: int, every: int, final_checkpoint: bool) -> bool:
    """Whether to checkpoint after `step` of a run that stops after `last` of `max_steps`."""
    if step == last:
        stops_early = last < max_steps  # (--stop-after) it must leave a checkpoint to resume from
        return stops_early or (every > 0 and final_checkpoint)
    return every > 0 and step % every == 0


def export_hf(state: dict, model_dir: str, out: Path, tokenizer, cfg: PretrainConfig | None = None) -> None:
    """Weights in the input model's dtype, its config and tokenizer, and a manifest naming the
    input model as parent (dus/manifest.py)."""
    config = load_hf_config(model_dir)
    dtype = config.dtype if isinstance(config.dtype, torch.dtype) else torch.float32
    if cfg is not None and cfg.export_dtype != "auto":
        dtype = config.dtype = getattr(torch, cfg.export_dtype)
    if dtype != torch.float32:  # an update below the dtype's resolution is lost in the cast: say so
        warning = export_warning(*rounded_away(state, SourceTensors(model_dir), dtype), dtype)
        if warning:
            print(warning, file=sys.stderr, flush=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True)
    model.tie_weights()  # tied embeddings are saved once, as from_pretrained expects
    with atomic_model_files(out) as staging:  # a kill mid-export leaves no half a model
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        cfg = cfg or PretrainConfig(model=model_dir, output=str(out))
        write_manifest(
            staging, stage_manifest("pretrain", staging, model_dir, asdict(cfg), [*cfg.data, *cfg.eval_data])
        )
        (staging / "README.md").write_text(
            stage_card(
                "pretrain", model_dir, "Continued pretraining with `dus pretrain` (its options are in dus_plan.json)."
            )
        )


def _summary_line(s: dict, out: Path) -> str:
    speed = "n/a tokens/s"
    if s["tokens_per_s"]:
        speed = f"{s['tokens_per_s']:,.0f} tokens/s ({s['tokens_per_s_per_device']:,.0f} per device)"
    mfu = f", MFU {s['mfu']:.1%}" if s["mfu"] else ""
    where = f"model saved to {out}" if s["finished"] else f"stopped at step {s['step']}: continue with --resume"
    return f"done: {s['step']} steps, {s['tokens']:,} tokens; {speed}{mfu}; {where}"


def _count(n: float) -> str:
    """135.0M, 1.2B parameters. Not rich.filesize: that writes byte units (kB, GB), wrong for a count."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))
