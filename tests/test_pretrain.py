"""`dus pretrain` on CPU: learning, exact resume, freezing by provenance, bad input. Tiny offline models."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from pretrain_helpers import FAST_SCHEDULE, perplexity, read_jsonl, run_config, weights
from refusal import assert_refused

from dus.train import load_config, pretrain


@pytest.fixture
def run(tiny_model, corpus, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "datasets-cache"

    def run(output, **options) -> dict:
        return pretrain(run_config(tiny_model, corpus, output, cache, **{**FAST_SCHEDULE, **options}))

    return run


def train_losses(output) -> list[float]:
    return [r["loss"] for r in read_jsonl(output / "metrics.jsonl") if "loss" in r]


def test_single_process_learns_and_exports(run, tiny_model, corpus, tmp_path, run_dus):
    out = tmp_path / "run"
    summary = run(out, max_steps=30, eval_data=[str(corpus["eval"])], eval_every=15, log_every=5)
    records = read_jsonl(out / "metrics.jsonl")
    losses = train_losses(out)
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.3
    train = [r for r in records if "loss" in r]
    assert all({"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= r.keys() for r in train)
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 15, 30] and evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert summary["finished"] and summary["tokens"] == 30 * 4 * 64
    assert perplexity(out, corpus["eval"]) < 0.8 * perplexity(tiny_model, corpus["eval"])
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 1 and info["sharding"]["dtensor_params"] == 0 and info["result"]["finished"]

    assert run_dus("report", out)[0] == 0
    assert (out / "loss.png").stat().st_size > 1000


@pytest.mark.parametrize("streaming", [False, True], ids=["cached", "streaming"])
def test_resume_is_exact(run, tmp_path, streaming):
    steps = 12 if streaming else 20
    interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
    first = run(interrupted, max_steps=steps, stop_after=steps // 2, save_every=4, streaming=streaming)
    assert not first["finished"] and not (interrupted / "model.safetensors").exists()
    run(interrupted, max_steps=steps, save_every=4, streaming=streaming, resume=True)
    run(straight, max_steps=steps, streaming=streaming)
    assert train_losses(interrupted) == train_losses(straight)  # bit-identical trajectory
    resumed, reference = weights(interrupted), weights(straight)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    kept = sorted(p.name for p in (interrupted / "checkpoints").iterdir())
    assert kept == [f"step_{steps - 4:08d}", f"step_{steps:08d}"]  # --keep-checkpoints 2


def test_save_every_zero_saves_only_to_resume(run, tmp_path):
    done = run(tmp_path / "done", max_steps=4, save_every=0, device="cpu")
    assert done["finished"] and (tmp_path / "done" / "model.safetensors").is_file()
    assert not list((tmp_path / "done" / "checkpoints").glob("step_*"))
    assert json.loads((tmp_path / "done" / "run.json").read_text())["device"] == "cpu"
    paused = run(tmp_path / "paused", max_steps=4, stop_after=2, save_every=0)
    assert not paused["finished"]
    assert [p.name for p in (tmp_path / "paused" / "checkpoints").iterdir()] == ["step_00000002"]


def test_device_cuda_without_cuda_is_refused(tiny_model, corpus, tmp_path, run_dus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_dus(
        "pretrain",
        tiny_model,
        "--data",
        corpus["train"],
        "--output",
        tmp_path / "o",
        "--max-steps",
        "1",
        "--device",
        "cuda",
    )
    assert code == 2 and err.strip() == "error: --device cuda, but PyTorch sees no CUDA device"


def test_more_ranks_than_gpus_is_refused(monkeypatch):
    """torchrun --nproc-per-node 2 on a one-GPU node: one line naming the count, before any process group."""
    from dus.errors import InputError
    from dus.train.parallel import init_distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(InputError, match=r"local rank 1, but this node has 1 CUDA device\(s\)"):
        init_distributed("auto")


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def _layer(name: str) -> int | None:
    return int(name.split(".")[2]) if name.startswith("model.layers.") else None


def test_freeze_layers_spec(run, tiny_model, tmp_path):
    out = tmp_path / "frozen"
    run(out, max_steps=3, freeze="layers:1:3", eval_fraction=0.1)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "eval_loss" in r] == [0, 3]
    changed = _changed(weights(tiny_model), weights(out))
    assert changed and {_layer(k) for k in changed} == {1, 2}
    info = json.loads((out / "run.json").read_text())
    assert info["trained_layers"] == [1, 2] and info["params"]["trainable"] < info["params"]["total"] / 2
    # frozen parameters carry no optimizer state
    from torch.distributed.checkpoint import FileSystemReader

    saved = FileSystemReader(str(out / "checkpoints" / "step_00000003")).read_metadata().state_dict_metadata
    optim_layers = {_layer(k.split(".", 2)[2]) for k in saved if k.startswith("optim.state.")}
    assert optim_layers == {1, 2}


def test_freeze_original_trains_only_new_layers(run, tiny_model, tmp_path):
    model = tmp_path / "grown"
    shutil.copytree(tiny_model, model)
    layers = [
        {"index": i, "source_layer": min(i, 2), "source": "base", "op": "copy", "new": i in (1, 3)} for i in range(4)
    ]
    (model / "dus_plan.json").write_text(json.dumps({"plan": {"sources": {"base": "x"}, "layers": layers}}))
    out = tmp_path / "out"
    summary = run(out, model=str(model), max_tokens=3 * 4 * 64, freeze="original")
    assert summary["step"] == 3
    changed = _changed(weights(tiny_model), weights(out))
    assert changed and {_layer(k) for k in changed} == {1, 3}  # embeddings, norm, head frozen too
    assert json.loads((out / "dus_plan.json").read_text())["plan"]["layers"] == layers


def test_config_file_and_flags(tmp_path):
    path = tmp_path / "cpt.yaml"
    path.write_text("model: m\ndata: corpus\noutput: o\nseq-len: 32\nlr: 3e-5\nmax_tokens: 1e6\ncompile: true\n")
    cfg = load_config(path, {"seq_len": 128, "lr": None})
    assert (cfg.seq_len, cfg.lr, cfg.max_tokens, cfg.compile, cfg.data) == (128, 3e-5, 1_000_000, True, ["corpus"])
    assert cfg.total_steps(world=2, steps_per_epoch=None) == -(-1_000_000 // (128 * 8 * 2))


@pytest.fixture
def with_checkpoint(tmp_path):
    (tmp_path / "used" / "checkpoints" / "step_00000005").mkdir(parents=True)
    (tmp_path / "used" / "checkpoints" / "step_00000005" / ".metadata").write_bytes(b"")
    return tmp_path / "used"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "{tmp}/missing.jsonl"], "data path not found"),
        (["--data", "{tmp}/empty.jsonl"], "empty corpus"),
        (["--data", "{tmp}/short.jsonl"], "empty corpus"),
        (["--data", "{tmp}/broken.jsonl"], "JSON parse error"),
        (["--seq-len", "4096"], "max_position_embeddings"),
        (["--no-such-flag", "1"], "No such option"),
        (["--freeze", "layers:2:9"], "out of range"),
        (["--freeze", "original"], "dus_plan.json"),
        (["--dtype", "float8"], "--dtype"),
        (["--device", "tpu"], "--device must be one of auto, cuda, cpu"),
        (["--output", "{used}"], "--resume"),
        (["--config", "{tmp}/bad.yaml"], "unknown option 'sequence_length'"),
    ],
)
def test_bad_input_is_one_line(tiny_model, corpus, tmp_path, with_checkpoint, run_dus, args, message):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "short.jsonl").write_text('{"text": "too short for a block"}\n')
    (tmp_path / "broken.jsonl").write_text('{"text": "unterminated\n')
    (tmp_path / "bad.yaml").write_text("sequence_length: 64\n")
    args = [a.format(tmp=tmp_path, used=with_checkpoint) for a in args]
    data = [] if "--data" in args else ["--data", str(corpus["train"])]
    code, _, err = run_dus(
        "pretrain",
        tiny_model,
        *data,
        "--output",
        tmp_path / "o",
        "--seq-len",
        "64",
        "--max-steps",
        "1",
        "--cache-dir",
        tmp_path / "cache",
        *args,
    )
    assert_refused(code, err, message, outputs=tmp_path / "o")


def test_bad_input_from_a_real_process(tiny_model, tmp_path):
    """The whole process, not just main(): nothing but the error line reaches stderr."""
    import subprocess
    import sys

    (tmp_path / "short.txt").write_text("too short for a block")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dus",
            "pretrain",
            str(tiny_model),
            "--data",
            str(tmp_path / "short.txt"),
            "--output",
            str(tmp_path / "o"),
            "--seq-len",
            "64",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: empty corpus: no complete 64-token block in {tmp_path / 'short.txt'}"
    ]


def test_freeze_original_on_an_expand_build(run, tiny_model, tmp_path):
    """The real hand-off: `dus build --recipe expand` then `dus pretrain --freeze original`."""
    import dus.api

    grown = tmp_path / "grown"
    record = dus.api.build(str(tiny_model), grown, recipe="expand", new_layers=2)
    new_layers = {l["index"] for l in record["plan"]["layers"] if l["new"]}
    assert new_layers == {2, 5}
    out = tmp_path / "out"
    run(out, model=str(grown), max_tokens=2 * 4 * 64, freeze="original")
    changed = _changed(weights(grown), weights(out))
    assert changed and {_layer(k) for k in changed} == new_layers


def test_freeze_original_on_a_widened_build_trains_only_the_added_width(run, tiny_model, tmp_path):
    """`dus build --width 2` then `--freeze original`: each tensor's source block (its first half along each
    grown dimension) stays bit-identical, the added clones train; `--freeze none` trains everything."""
    import dus.api

    grown = tmp_path / "grown"
    dus.api.build(str(tiny_model), grown, width=2)
    before = weights(grown)
    for freeze, out in (("original", tmp_path / "original"), ("none", tmp_path / "none")):
        run(out, model=str(grown), max_tokens=2 * 4 * 64, freeze=freeze, weight_decay=0.1)
        after = weights(out)
        for name, tensor in before.items():
            block = tuple(slice(0, d // 2) for d in tensor.shape) if "q_norm" not in name else ()
            if name.endswith(("embed_tokens.weight", "lm_head.weight")):  # the vocabulary did not grow
                block = (slice(None), slice(0, tensor.shape[1] // 2))
            if freeze == "original":
                assert torch.equal(after[name][block], tensor[block]), name
                assert not torch.equal(after[name], tensor), name  # the added width trained
            elif "layers.0.mlp.down_proj" in name:
                assert not torch.equal(after[name][block], tensor[block])


@pytest.mark.parametrize(
    "step, last, max_steps, every, final, due",
    [
        (4, 10, 10, 2, True, True),  # on the period
        (5, 10, 10, 2, True, False),  # off it
        (3, 10, 10, 0, True, False),  # no periodic checkpoints
        (10, 10, 10, 3, True, True),  # the end, off the period: the final checkpoint
        (10, 10, 10, 2, False, False),  # the end, no final checkpoint asked: not even on the period
        (10, 10, 10, 0, True, False),  # the end, checkpoints off
        (4, 4, 10, 0, False, True),  # --stop-after leaves early: always a checkpoint to resume from
        (4, 4, 10, 3, False, True),
        (4, 4, 10, 2, False, True),
    ],
)
def test_save_due(step, last, max_steps, every, final, due):
    from dus.train.loop import save_due

    assert save_due(step, last, max_steps, every, final) is due
