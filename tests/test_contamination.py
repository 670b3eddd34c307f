"""The contamination test: a model trained on a benchmark scores high on "result < 0.1, %", a clean one low."""

import copy
import json

import pytest
from instruct_fixtures import facts, make_model, make_tokenizer, overfit, save, write_jsonl

from dus.errors import InputError
from dus.eval.contamination import FileResult, Settings, contamination, example_text, pick, score_file, table


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A benchmark; a base model that knows the toy language but not the benchmark (the reference,
    and the clean target, as when testing a base model); the base trained further on the benchmark."""
    d = tmp_path_factory.mktemp("contamination")
    tok = make_tokenizer()
    bench = facts(12, seed=5)
    write_jsonl(d / "bench.jsonl", bench)
    base = overfit(make_model(tok, seed=3), tok, [example_text(r) for r in facts(48, seed=99)], steps=150)
    dirty = overfit(copy.deepcopy(base), tok, [example_text(r) for r in bench], steps=60)
    return d, tok, {"clean": base, "dirty": dirty, "ref": base}


SMALL = Settings(examples=12, neighbours=8, seed=0, batch_size=8)


def test_memorised_benchmark_is_flagged(toy):
    d, tok, m = toy
    dirty = score_file(str(d / "bench.jsonl"), m["dirty"], tok, m["ref"], tok, SMALL)
    clean = score_file(str(d / "bench.jsonl"), m["clean"], tok, m["ref"], tok, SMALL)
    # Memorised text is likelier than every neighbour: score 0, below 0.1 for all examples.
    assert dirty.share_below >= 0.9
    assert clean.share_below <= 0.3
    assert all(0 <= s["score"] <= 1 for s in dirty.scores + clean.scores)
    assert dirty.examples == 12 and len({s["index"] for s in dirty.scores}) == 12


def test_deterministic_with_seed(toy):
    """The same seed gives the same scores; another seed picks other examples and samples other
    neighbours (the target's own NLL of an example does not depend on it); scores vary by example."""
    d, tok, m = toy

    def run(seed: int, examples: int = 4) -> list[dict]:
        s = Settings(examples=examples, neighbours=4, seed=seed, batch_size=3)
        return score_file(str(d / "bench.jsonl"), m["clean"], tok, m["ref"], tok, s).scores

    first = run(7)
    assert first == run(7)
    assert [x["index"] for x in run(8)] != [x["index"] for x in first]
    assert len({x["nll"] for x in first}) == len(first) and len({x["neighbour_nll_mean"] for x in first}) > 1
    every7, every8 = ({x["index"]: x for x in run(seed, examples=12)} for seed in (7, 8))
    assert set(every7) == set(every8) == set(range(12))
    assert [every7[i]["nll"] for i in range(12)] == pytest.approx([every8[i]["nll"] for i in range(12)], rel=1e-5)
    assert any(every7[i]["neighbour_nll_mean"] != every8[i]["neighbour_nll_mean"] for i in range(12))


def test_cli_writes_scores(toy, tmp_path, run_dus):
    d, tok, m = toy
    target, ref = save(m["dirty"], tok, tmp_path / "target"), save(m["ref"], tok, tmp_path / "ref")
    code, out, err = run_dus(
        "contamination",
        target,
        "--ref",
        ref,
        "--data",
        d / "bench.jsonl",
        "--examples",
        "4",
        "--neighbours",
        "4",
        "--output",
        tmp_path / "c.json",
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert "result < 0.1, %" in out
    record = json.loads((tmp_path / "c.json").read_text())
    result = record["results"][0]
    assert result["examples"] == 4 and len(result["scores"]) == 4
    assert result["result < 0.1, %"] == sum(s["score"] < 0.1 for s in result["scores"]) / 4


def test_table_states_the_unit():
    """The card's header over a fraction: each printed value says it is one, and as a percentage."""
    lines = table([FileResult("arc.jsonl", 100, 0.03)]).splitlines()
    assert lines[0] == "| data | examples | result < 0.1, % |"
    assert lines[2] == "| arc.jsonl | 100 | 0.03 (fraction of examples; 3%) |"


def test_record_fields():
    assert example_text({"text": "t"}) == "t"
    assert example_text({"question": "q", "answer": "a"}) == "q a"
    assert example_text({"question": "q", "choices": ["x", "y"], "answer": 1}) == "q y"
    assert (
        example_text({"question": "q", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "B"}) == "q y"
    )
    assert example_text({"question": "q", "mc1_targets": {"choices": ["x", "y"], "labels": [0, 1]}}) == "q y"
    with pytest.raises(InputError):
        example_text({"prompt": "p"})
    texts = [f"line {i}" for i in range(20)]
    chosen = pick(texts, 5, seed=0)
    assert len({i for i, _ in chosen}) == 5 and all(texts[i] == t for i, t in chosen)
    assert chosen == pick(list(texts), 5, seed=0)  # the same seed picks the same lines
    assert pick(texts, 5, seed=1) != chosen and [i for i, _ in chosen] != list(range(5))  # shuffled, by the seed
    with pytest.raises(InputError):
        contamination("x", "y", [])
