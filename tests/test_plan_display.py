"""What `dus plan` and friends show a newcomer (issue 25, item 8): the resolved dtype, a preset's config
values, repeating maps as a pattern, layer numbers on the plot's axes, separators in the analyzer's
budget error, `--debug` in `dus --help`."""

import json
from pathlib import Path

import pytest

from dus.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
MISTRAL = ROOT / "configs" / "mistral-7b-v0.1.json"


def _plan(run_dus, *args) -> str:
    code, out, err = run_dus("plan", *args)
    assert code == 0, err
    return out


def test_plan_shows_the_dtype_it_resolved(llama_source, run_dus):
    out = _plan(run_dus, llama_source, "--overlap", "1")
    assert "dtype float32 (auto: the source's)" in out and "dtype auto" not in out
    assert "dtype bfloat16\n" in _plan(run_dus, llama_source, "--overlap", "1", "--dtype", "bf16") + "\n"


def test_the_preset_shows_the_config_values_it_sets(run_dus):
    out = _plan(run_dus, MISTRAL, "--preset", "solar")
    assert (
        "config sets: architectures=['LlamaForCausalLM'], model_type='llama', sliding_window deleted, "
        "max_position_embeddings=4096"
    ) in out
    assert "dtype float16" in out
    assert "config sets" not in _plan(run_dus, MISTRAL)


def test_repeating_maps_print_as_a_pattern(run_dus):
    out = _plan(run_dus, MISTRAL, "--recipe", "interleave", "--factor", "3")
    maps = out.split("layer map (output <- source):\n")[1].strip().splitlines()
    assert maps == ["0-95  <-  base 0-31, each layer 3 times in place"]
    out = _plan(run_dus, MISTRAL, "--recipe", "stack", "--factor", "4")
    maps = out.split("layer map (output <- source):\n")[1].strip().splitlines()
    assert maps == ["0-127  <-  base 0-31, the whole run 4 times (output layer i <- base layer i mod 32)"]
    assert "(0,0,...,31,31)" in _plan(run_dus, MISTRAL, "--recipe", "interleave")  # (0,0,...,31,31)
    out = _plan(run_dus, MISTRAL, "--layers", "4:8,4:8")
    assert out.endswith("0-7  <-  base 4-7, the whole run 2 times\n")
    rows = _plan(run_dus, MISTRAL).split("layer map (output <- source):\n")[1].splitlines()
    dus_map = [line.strip() for line in rows]
    assert dus_map == ["0-23  <-  base 0-23 (copy)", "24-47  <-  base 8-31 (copy)"]  # not a repeat


def test_the_plot_has_layer_numbers_on_its_axes(tmp_path):
    import dus.api
    from dus.plan.plot import plot_plan

    resolved = dus.api.plan(str(MISTRAL))
    labels = plot_plan(resolved.plan, 32, tmp_path / "map.png")
    assert labels["source"] == [str(i) for i in range(0, 32, 2)]
    assert labels["output"] == [str(i) for i in range(0, 48, 5)]  # 47 would touch 45
    assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"
    small = plot_plan(dus.api.plan(str(MISTRAL), layers="0:4,2").plan, 32, tmp_path / "small.png")
    assert small["output"] == ["0", "1", "2", "3", "4"]


def test_the_analyzers_budget_error_has_thousands_separators():
    from dus.analyze import recommend_overlap

    n = 6
    distance = [[0.0] * (n + 1) for _ in range(n + 1)]
    with pytest.raises(
        InputError,
        match=r"--target-params 141,595,200 is smaller than the smallest DUS of this "
        r"6-layer model \(8 layers, 410,000,000 params at overlap 2\)",
    ):
        recommend_overlap(distance, [50_000_000] * n, 10_000_000, target_params=141_595_200)


def test_debug_is_shown_in_the_help(run_dus):
    code, out, _ = run_dus("--help")
    assert code == 0 and "--debug" in out and "traceback" in out
    code, _, err = run_dus("plan", "/nonexistent")
    assert code == 2 and err == "error: /nonexistent: does not exist\n"


def test_plan_json_is_unchanged_in_shape(run_dus):
    info = json.loads(_plan(run_dus, MISTRAL, "--json"))
    assert info["dtype"] == "auto" and info["num_layers"] == 48
