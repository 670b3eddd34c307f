"""`dus pretrain` on an upcycled model: router aux loss, tokens per expert, --freeze router|experts."""

import json

import pytest
from pretrain_helpers import FAST_SCHEDULE, read_jsonl, run_config

import dus.api
from dus.errors import InputError
from dus.train.loop import pretrain


@pytest.fixture(scope="module")
def moe(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("moe") / "moe"
    dus.api.upcycle(str(tiny_model), out, experts=4, top_k=2)
    return out


@pytest.fixture
def train(moe, corpus, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "datasets-cache"

    def train(output, **options) -> dict:
        return pretrain(run_config(moe, corpus, output, cache, **{**FAST_SCHEDULE, "max_steps": 3, **options}))

    return train


def _load(directory):
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).state_dict()


def test_an_upcycled_model_trains_with_its_router_loss_and_logs_tokens_per_expert(train, moe, tmp_path):
    out = tmp_path / "run"
    train(out, router_aux_loss_coef=0.02, eval_fraction=0.1)
    records = read_jsonl(out / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 3
    for record in steps:
        # every token of the step goes to top-2 of 4 experts in each of the 4 layers
        assert sum(record["tokens_per_expert"]) == 4 * 64 * 2 * 4 and len(record["tokens_per_expert"]) == 4
        assert 0.25 <= record["max_expert_share"] <= 1.0 and record["router_aux_loss_coef"] == 0.02
    assert [r["step"] for r in records if "eval_loss" in r] == [0, 3]
    assert json.loads((out / "config.json").read_text())["model_type"] == "mixtral"
    assert _load(out).keys() == _load(moe).keys()  # the trained model loads as the upcycled one did


@pytest.mark.parametrize("part", ["router", "experts"])
def test_freeze_trains_only_the_router_or_only_the_experts(part, train, moe, tmp_path):
    import torch

    out = tmp_path / part
    train(out, freeze=part)
    before, after = _load(moe), _load(out)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed
    if part == "router":
        assert all(k.endswith("mlp.gate.weight") for k in changed), changed
    else:
        assert all(".experts." in k for k in changed), changed


def test_moe_options_on_a_dense_model_are_refused(tiny_model, corpus, tmp_path):
    with pytest.raises(InputError, match="not a mixture of experts"):
        pretrain(
            {
                "model": str(tiny_model),
                "data": [str(corpus["train"])],
                "output": str(tmp_path / "o"),
                "seq_len": 64,
                "batch_size": 4,
                "max_steps": 1,
                "freeze": "router",
            }
        )


def test_the_router_loss_is_added_to_the_training_loss_only(train, tmp_path):
    off = train(tmp_path / "off", router_aux_loss_coef=0.0, max_steps=1, eval_fraction=0.1)
    on = train(tmp_path / "on", router_aux_loss_coef=1.0, max_steps=1, eval_fraction=0.1)
    first = [read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("off", "on")]
    assert on["loss"] > off["loss"] + 0.5  # + 1.0 x the load-balancing loss (about top_k for a fresh router)
    assert first[0][0]["eval_loss"] == first[1][0]["eval_loss"]  # eval: the language-model loss alone


def test_a_family_without_a_router_loss_still_logs_tokens_per_expert():
    import torch
    import transformers

    from dus.train.moe import MoeTraining, is_moe

    config = transformers.HunYuanMoEV1Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=4,
        moe_topk=2,
        head_dim=8,
    )
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert is_moe(model.config)
    with pytest.raises(InputError, match="defines no router load-balancing loss"):
        MoeTraining(model, 0.1)
    moe = MoeTraining(model, None)
    model.train()
    model(input_ids=torch.randint(0, 64, (2, 8)))
    record = moe.record(lambda t: t)
    assert sum(record["tokens_per_expert"]) == 2 * 8 * 2 * 2 and moe.coef == 0.0
