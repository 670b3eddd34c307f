"""The model card: Hub front matter through huggingface_hub (escaped, each tag once) and the layer map."""

from huggingface_hub import ModelCard

from dus.plan.model import LayerRef, OutputLayer, Plan
from dus.write.card import model_card


def _plan(recipe_name: str, sources: dict) -> Plan:
    layers = [OutputLayer((LayerRef(i),)) for i in (0, 1, 1, 2)]
    return Plan(layers, sources, {"name": recipe_name, "overlap": 1})


def test_front_matter_parses_and_lists_each_tag_once():
    text = model_card(_plan("dus", {"base": "org/model"}), 3, 1234)
    assert text.split("---")[1].count("- dus\n") == 1  # the recipe named dus is not a second dus tag
    card = ModelCard(text)
    assert card.data.tags == ["dus", "depth-up-scaling"]
    assert card.data.base_model == ["org/model"] and card.data.library_name == "transformers"
    assert "| 2 | base | 1 | copy |\n| 3 | base | 2 | copy |" in card.text


def test_odd_names_are_escaped_and_several_bases_are_a_merge():
    card = ModelCard(model_card(_plan("a: b # c", {"base": "org/x", "other": "org/y"}), 3, 1))
    assert card.data.tags[-1] == "a: b # c"  # survives the YAML round trip
    assert card.data.base_model == ["org/x", "org/y"] and card.data.base_model_relation == "merge"
