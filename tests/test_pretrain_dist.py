"""`torchrun --nproc-per-node 2 -m dus pretrain` on CPU: FSDP2 over gloo really shards, ranks read disjoint
data, and a run stopped halfway resumes from its sharded checkpoint."""

from __future__ import annotations

import json

import pytest
from pretrain_helpers import perplexity, read_jsonl, run_ranks, torchrun_pretrain
from transformers import AutoModelForCausalLM


@pytest.mark.slow
def test_two_ranks_shard_parameters_and_data(tiny_model, corpus, tmp_path):
    out = tmp_path / "fsdp"
    cmd = torchrun_pretrain(
        tiny_model,
        corpus,
        out,
        tmp_path / "cache",
        *("--eval-data", str(corpus["eval"]), "--max-steps", "20", "--lr", "3e-3", "--warmup-steps", "2"),
        *("--log-every", "5", "--eval-every", "20", "--log-samples", "--save-every", "10"),
    )
    for extra in (["--stop-after", "10"], ["--resume"]):  # the second half resumes from sharded checkpoints
        done = run_ranks(cmd + extra)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    info = json.loads((out / "run.json").read_text())
    sharding = info["sharding"]
    assert info["world_size"] == 2 and sharding["mesh_shape"] == [2] and sharding["placements"] == ["S(0)"]
    assert sharding["dtensor_params"] == sharding["params"] > 0
    assert sharding["local_numel"] < 0.6 * sharding["global_numel"]  # each rank holds about half

    records = read_jsonl(out / "metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert [r["step"] for r in records if "loss" in r] == [5, 10, 15, 20]
    assert losses[-1] < losses[0] and evals[-1] < evals[0]
    assert info["resumed_from"].endswith("step_00000010")

    seen = [[h for r in read_jsonl(out / f"samples-rank{rank}.jsonl") for h in r["hashes"]] for rank in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 20 * 4
    assert not set(seen[0]) & set(seen[1])  # disjoint shares of the corpus

    AutoModelForCausalLM.from_pretrained(out)
    assert perplexity(out, corpus["eval"]) < perplexity(tiny_model, corpus["eval"])
