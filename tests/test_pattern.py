"""A build that breaks the source's periodic attention pattern says so (stderr and model card)."""

from __future__ import annotations

from models import save_model

from dus.plan.pattern import broken_pattern_note, period

GEMMA3 = ["sliding_attention"] * 5 + ["full_attention"]


def test_period_of_layer_types():
    assert period(GEMMA3 * 2) == 6
    assert period(["full_attention"] * 4) == 1
    assert period(["full_attention", "full_attention", "sliding_attention"]) == 3  # no repeat: its length


def test_note_only_when_the_output_leaves_the_period():
    source = {"layer_types": GEMMA3 * 2}
    broken = {"layer_types": [source["layer_types"][s] for s in list(range(8)) + list(range(4, 12))]}
    note = broken_pattern_note(source, broken)
    assert "6-layer pattern" in note and "output layers 9, 11, 15 differ" in note and "SRC.gguf" in note
    assert broken_pattern_note(source, {"layer_types": GEMMA3 * 4}) is None  # a whole-stack repeat keeps it
    assert broken_pattern_note({}, {}) is None
    # Qwen2-style leading full layers repeat nothing: no period for a converter to assume.
    leading = ["full_attention"] * 2 + ["sliding_attention"] * 2
    assert broken_pattern_note({"layer_types": leading}, {"layer_types": leading[:3] + leading[1:]}) is None


def test_build_notes_a_broken_period_once_and_in_the_card(tmp_path, run_dus):
    save_model("gemma2", tmp_path / "src")  # transformers' Gemma-2: sliding and full attention alternate
    code, _, err = run_dus("build", tmp_path / "src", tmp_path / "odd", "--layers", "0:3,2:4")
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("dus: note:")]
    assert len(notes) == 1 and "2-layer pattern" in notes[0] and "convert_hf_to_gguf" in notes[0]
    assert "**Attention pattern:** layer_types no longer repeats" in (tmp_path / "odd" / "README.md").read_text()

    code, _, err = run_dus("build", tmp_path / "src", tmp_path / "even", "--layers", "0:4,0:4")
    assert code == 0 and "note:" not in err
    assert "Attention pattern" not in (tmp_path / "even" / "README.md").read_text()
