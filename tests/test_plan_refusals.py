"""Plans that would silently not do what was asked are refused with the reason (issue 25, item 4):
a DUS overlap that does not grow the stack, and options the chosen recipe ignores."""

import json
from pathlib import Path

import pytest
import yaml

import dus.api
from dus.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path, layers: int) -> str:
    config = json.loads((ROOT / "configs" / "mistral-7b-v0.1.json").read_text())
    path = tmp_path / f"{layers}-layers.json"
    path.write_text(json.dumps({**config, "num_hidden_layers": layers}))
    return str(path)


@pytest.mark.parametrize(
    "layers, overlap, expected",
    [
        (
            30,
            15,
            "--overlap 15 on a 30-layer model gives the same depth: DUS grows the stack only while 2(n - m) > n, "
            "so m <= 14 here (--overlap 14: 32 layers); for a deliberately same-depth or shallower stack give it "
            "with --layers",
        ),
        (30, 16, "--overlap 16 on a 30-layer model gives fewer layers (28)"),
        (16, None, "--overlap 8 on a 16-layer model gives the same depth"),  # the default on a small model
        (
            9,
            None,
            "--overlap 8 on a 9-layer model gives fewer layers (2): DUS grows the stack only while 2(n - m) > n, "
            "so m <= 4 here (--overlap 4: 10 layers)",
        ),
    ],
)
def test_an_overlap_that_does_not_grow_is_refused(tmp_path, run_dus, layers, overlap, expected):
    flags = ["--overlap", str(overlap)] if overlap is not None else []
    code, out, err = run_dus("plan", _config(tmp_path, layers), *flags)
    assert code == 2 and not out and expected in err, err


def test_the_largest_valid_overlap_and_layers_still_plan(tmp_path):
    source = _config(tmp_path, 30)
    assert dus.api.plan(source, overlap=14).plan.recipe["overlap"] == 14
    assert len(dus.api.plan(source, overlap=14).plan.layers) == 32
    assert len(dus.api.plan(source, layers="0:15,15:30").plan.layers) == 30  # deliberate: with --layers


@pytest.mark.parametrize(
    "flags, expected",
    [
        (
            ["--recipe", "stack", "--overlap", "4"],
            "--overlap is not an option of --recipe stack, which would ignore it (its options: --factor)",
        ),
        (
            ["--factor", "3"],
            "--factor is not an option of --recipe dus, which would ignore it (its options: --overlap)",
        ),
        (["--recipe", "idus", "--new-layers", "2"], "--new-layers is not an option of --recipe idus"),
        (["--layers", "0:30", "--group", "4"], "--group is not an option of --recipe layers"),
    ],
)
def test_options_the_recipe_ignores_are_an_error(tmp_path, run_dus, flags, expected):
    code, _, err = run_dus("plan", _config(tmp_path, 30), *flags)
    assert code == 2 and expected in err, err


def test_a_recipe_file_that_gives_another_recipes_option_is_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"source": _config(tmp_path, 30), "recipe": "stack", "overlap": 4}))
    with pytest.raises(InputError, match=r"r\.yaml: --overlap is not an option of --recipe stack"):
        dus.api.plan(config=str(recipe))


def test_a_presets_own_values_are_not_the_users(tmp_path):
    """--preset solar sets overlap 8; an explicit --layers replaces its recipe without an error."""
    plan = dus.api.plan(_config(tmp_path, 32), preset="solar", layers="0:24,8:32")
    assert len(plan.plan.layers) == 48 and plan.plan.recipe["name"] == "layers"
    assert len(dus.api.plan(_config(tmp_path, 32), preset="solar", factor=None).plan.layers) == 48
