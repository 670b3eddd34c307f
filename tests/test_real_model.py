"""SmolLM2-135M-Instruct (a real pretrained model, from PyPI) through DUS end to end."""

import json
import math

import pytest

pytestmark = pytest.mark.real_model


def test_dus_smollm2_end_to_end(smollm2, tmp_path, run_dus):
    from dus.eval.compare import CompareOptions, compare_models

    code, out, err = run_dus("build", smollm2, tmp_path / "up", "--overlap", "8", "--verify")
    assert code == 0, err
    assert "verified" in out
    record = json.loads((tmp_path / "up/dus_plan.json").read_text())
    assert record["output"]["num_layers"] == 44
    assert [l["source_layer"] for l in record["plan"]["layers"]] == list(range(22)) + list(range(8, 30))

    results = compare_models(CompareOptions(models=[str(smollm2), str(tmp_path / "up")], max_tokens=2048))
    base, up = results["models"]
    assert (base["layers"], up["layers"]) == (30, 44)
    assert up["parameters"] - base["parameters"] == 14 * (base["parameters"] - 576 * 49152 - 576) // 30
    for r in (base, up):
        assert math.isfinite(r["perplexity"]) and r["tokens"] > 1000
        assert r["reply"]
    assert base["perplexity"] < 40  # a real model on real English text
    # SOLAR observed the drop right after DUS, before continued pretraining.
    assert up["perplexity"] > base["perplexity"]
    print(f"\nSmolLM2 perplexity: base {base['perplexity']:.2f}, DUS overlap 8 {up['perplexity']:.2f}")
    print(f"replies: base {base['reply']!r}; upscaled {up['reply']!r}")
