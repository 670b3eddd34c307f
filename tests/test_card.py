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


def test_a_local_source_is_named_by_its_directory_never_its_path(tmp_path):
    """base_model and the title name a local source by its directory name (issue 25, item 9)."""
    source = tmp_path / "deep" / "my-base"
    source.mkdir(parents=True)
    text = model_card(_plan("dus", {"base": str(source)}), 3, 1)
    card = ModelCard(text)
    assert card.data.base_model == ["my-base"] and card.data.base_model_relation == "merge"
    assert "# Depth up-scaled from my-base\n" in card.text and str(tmp_path) not in text


def test_a_hub_cache_snapshot_is_named_by_its_hub_id(tmp_path):
    snapshot = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    card = ModelCard(model_card(_plan("dus", {"base": str(snapshot)}), 3, 1))
    assert card.data.base_model == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert "# Depth up-scaled from HuggingFaceTB/SmolLM2-135M-Instruct\n" in card.text


def test_one_hub_source_is_a_merge_too():
    """A build rearranges existing weights without training them: the Hub's `merge`, never `finetune`."""
    card = ModelCard(model_card(_plan("dus", {"base": "org/model"}), 3, 1))
    assert card.data.base_model == ["org/model"] and card.data.base_model_relation == "merge"


def test_a_trained_stage_is_a_finetune_of_its_parent(tmp_path):
    from dus.write.card import stage_card

    card = ModelCard(stage_card("sft", str(tmp_path / "runs" / "pretrain"), "Trained."))
    assert card.data.base_model == ["pretrain"] and card.data.base_model_relation == "finetune"
    assert card.data.tags == ["dus", "sft"] and card.text.startswith("\n# pretrain, after dus sft")
    assert ModelCard(stage_card("dpo", "org/sft-model", "x")).data.base_model == ["org/sft-model"]
