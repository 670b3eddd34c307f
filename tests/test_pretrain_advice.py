"""`dus pretrain` warns in one line when a run would silently do little (issue 25, item 5): a warm-up as long
as the run, a large final checkpoint for a short run, and an export dtype that rounds most updates away."""

from __future__ import annotations

import re

import pytest
import torch
from pretrain_helpers import run_config, weights

from dus.train import advice, pretrain


@pytest.fixture
def run(tiny_model, corpus, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "datasets-cache"

    def run(output, **options) -> dict:
        return pretrain(run_config(tiny_model, corpus, output, cache, **{"save_every": 0, **options}))

    return run


def test_the_messages():
    assert advice.warmup_warning(3, 100, 5e-5, 1.5e-6) == (
        "warning: --warmup-steps 100 >= this run's 3 steps: the learning rate never reaches --lr 5e-05 (the last "
        "step trains at 1.5e-06); lower --warmup-steps"
    )
    assert advice.warmup_warning(200, 100, 5e-5, 5e-6) is None
    assert advice.checkpoint_warning(3, 2_208_916_224, True) == (
        "warning: this 3-step run ends with a 2.2 GB checkpoint (weights and AdamW state, only to continue training "
        "later); --no-final-checkpoint leaves only the exported model"
    )
    assert advice.checkpoint_warning(3, 2_208_916_224, False) is None  # no final checkpoint
    assert advice.checkpoint_warning(5000, 2_208_916_224, True) is None  # a long run's is worth keeping
    assert advice.checkpoint_warning(3, 10**6, True) is None
    assert advice.export_warning(1000, 1000, 997, torch.bfloat16) == (
        "warning: the bfloat16 export rounds away the update of 99.7% of the weights (below bfloat16's resolution; "
        "0.3% differ from the input model): export in float32 with --export-dtype float32, or train longer or at a "
        "higher --lr"
    )
    assert advice.export_warning(1000, 1000, 400, torch.bfloat16) is None


def test_rounded_away_counts_updates_below_the_resolution():
    source = {"w": torch.ones(4, 4, dtype=torch.bfloat16), "b": torch.zeros(4, dtype=torch.bfloat16)}
    trained = {"w": torch.ones(4, 4) + 1e-4, "b": torch.tensor([0.0, 0.5, 0.0, 0.0]), "new": torch.ones(3)}
    trained["w"][0, 0] = 2.0  # one update bfloat16 can hold
    assert advice.rounded_away(trained, source, torch.bfloat16) == (20, 17, 15)
    assert advice.rounded_away(trained, source, torch.float32)[2] == 0


def test_a_warmup_longer_than_the_run_is_warned(run, tmp_path, capsys):
    run(tmp_path / "a", max_steps=3)  # the default --warmup-steps 100
    err = capsys.readouterr().err
    assert (
        "warning: --warmup-steps 100 >= this run's 3 steps: the learning rate never reaches --lr 5e-05 (the "
        "last step trains at 1.5e-06); lower --warmup-steps" in err
    )
    run(tmp_path / "b", max_steps=3, warmup_steps=1)
    assert "warmup" not in capsys.readouterr().err


def test_a_large_final_checkpoint_of_a_short_run_is_warned(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(advice, "LARGE_CHECKPOINT_BYTES", 1)  # the tiny model's checkpoint is kilobytes
    run(tmp_path / "a", max_steps=2, warmup_steps=1, save_every=10)
    line = [l for l in capsys.readouterr().err.splitlines() if "checkpoint" in l]
    assert len(line) == 1 and line[0].startswith("warning: this 2-step run ends with a ")
    said = re.search(r"a ([\d.]+) MB checkpoint \(weights and AdamW state", line[0])
    written = sum(f.stat().st_size for f in (tmp_path / "a" / "checkpoints").rglob("*") if f.is_file())
    # the tensors' bytes; the files add ~1.6 kB per tensor, which only a tiny model notices
    assert said and 0.85 * written < float(said[1]) * 1e6 <= written, (line, written)
    run(tmp_path / "b", max_steps=2, warmup_steps=1, save_every=10, final_checkpoint=False)
    assert "checkpoint" not in capsys.readouterr().err


def test_an_export_that_rounds_most_updates_away_is_warned(run, tiny_model, tmp_path, capsys):
    run(tmp_path / "bf16", max_steps=1, warmup_steps=1, lr=1e-7, export_dtype="bfloat16")
    err = capsys.readouterr().err
    assert "warning: the bfloat16 export rounds away the update of " in err
    assert "export in float32 with --export-dtype float32" in err
    run(tmp_path / "f32", max_steps=1, warmup_steps=1, lr=1e-7, export_dtype="float32")
    assert "rounds away" not in capsys.readouterr().err
    exported, source = weights(tmp_path / "f32"), weights(tiny_model)
    assert all(t.dtype == torch.float32 for t in exported.values())
    assert any(not torch.equal(exported[k], source[k]) for k in source if k in exported)
    assert all(t.dtype == torch.bfloat16 for t in weights(tmp_path / "bf16").values())
