"""dus scan: its scores are the built models' scores; spaces, search, resume, outputs and refusals."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from pretrain_helpers import TOPICS

import dus.api
from dus.errors import InputError
from dus.scan.options import ScanOptions
from dus.scan.run import scan
from dus.scan.space import block_of, layer_spec, make_space, prefix_length, search, single_block

QUESTIONS = [
    {"context": "The for statement is used to", "choices": [" iterate", " banana"], "answer": 0},
    {"context": "A class definition", "choices": [" defines", " eats", " sleeps"], "answer": " defines"},
    {"context": "Exceptions are raised", "choices": [" by", " moon"], "answer": 1},
    {"context": "The import statement", "choices": [" loads", " paints"], "answer": 0},
]


@pytest.fixture
def inputs(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(TOPICS[:5]), encoding="utf-8")
    probe = tmp_path / "facts.jsonl"
    probe.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS), encoding="utf-8")
    return {"text": str(text), "probe": str(probe)}


def _opts(source, out, **kw):
    return ScanOptions(source=str(source), out=str(out), device="cpu", **kw)


def _loglik(model, tokenizer, context: str, choice: str) -> float:
    ctx = tokenizer(context).input_ids
    ids = ctx + tokenizer(choice, add_special_tokens=False).input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
    return sum(logp[t - 1, ids[t]].item() for t in range(len(ctx), len(ids)))


def test_scores_equal_the_built_models(tiny_model, inputs, tmp_path, run_dus):
    """Every plan of the single-block space is scored; a sample, the best included, equals `dus eval --perplexity`
    on the built model (1e-4 relative), and its probe accuracy equals the built model's by log-likelihood."""
    record = scan(
        _opts(tiny_model, tmp_path / "scan", text=inputs["text"], probe=[inputs["probe"]], window=64, batch_size=3)
    )
    assert record["complete"] and len(record["plans"]) == 4 * 5 // 2
    assert set(record["base"]["scores"]) == {"perplexity", "accuracy:facts"}
    sample = [record["plans"][0]["layers"], "0:4,0:4", "0:2,1:4", "0:4,3"]
    for spec in sample:
        out = tmp_path / spec.replace(":", "-").replace(",", "_")
        dus.api.build(str(tiny_model), out, layers=spec)
        expected = _built_scores(out, inputs, run_dus)
        scores = next(p for p in record["plans"] if p["layers"] == spec)["scores"]
        assert math.isclose(scores["perplexity"], expected["perplexity"], rel_tol=1e-4)
        assert scores["accuracy:facts"] == expected["accuracy:facts"]


def _built_scores(out, inputs, run_dus) -> dict:
    """A built model's perplexity by `dus eval --perplexity` (window 64) and its log-likelihood accuracy."""
    from dus.runtime import load_model, load_tokenizer

    code, _, err = run_dus(
        "eval", out, "--perplexity", inputs["text"], "--window", "64", "--device", "cpu", "--output", out / "eval"
    )
    assert code == 0, err
    model, tok = load_model(out, "cpu", "float32")[0], load_tokenizer(out)
    right = [
        max(range(len(q["choices"])), key=lambda c: _loglik(model, tok, q["context"], q["choices"][c]))
        == (q["answer"] if isinstance(q["answer"], int) else q["choices"].index(q["answer"]))
        for q in QUESTIONS
    ]
    perplexity = json.loads((out / "eval" / "perplexity.json").read_text())["perplexity"]
    return {"perplexity": perplexity, "accuracy:facts": sum(right) / len(right)}


def test_scaled_repeats_score_as_their_built_recipes(tiny_model, inputs, tmp_path, run_dus, monkeypatch):
    """--scale F also scores the top plans with their repeated layers' residual outputs times F; each variant's
    scores are those of the recipe `dus build --config` builds (the scale operator's tensors, exactly)."""
    from dus.scan import scaled

    layers = ["0:3,1:4", "0:4,2:4"]
    opts = _opts(tiny_model, tmp_path / "s", text=inputs["text"], probe=[inputs["probe"]], window=64, top=2)
    record = scan(dataclasses.replace(opts, layers=layers, scale=["0.5", "0.25"]))
    variants = [p for p in record["plans"] if "scale" in p]
    assert sorted((p["layers"], p["scale"]) for p in variants) == sorted((s, f) for s in layers for f in (0.5, 0.25))
    assert all(p["scale_modules"] == ["self_attn.o_proj", "mlp.down_proj"] and "block" not in p for p in variants)
    plain = {p["layers"]: p["scores"] for p in record["plans"] if "scale" not in p}
    for variant in variants:
        assert variant["scores"]["perplexity"] != plain[variant["layers"]]["perplexity"]  # the factor took effect
        plan = (0, 1, 2, 1, 2, 3) if variant["layers"] == "0:3,1:4" else (0, 1, 2, 3, 2, 3)
        recipe = tmp_path / f"{variant['layers']}-{variant['scale']}.yml"
        recipe.write_text(scaled.recipe_text(str(tiny_model), plan, variant["scale"], variant["scale_modules"]))
        out = tmp_path / f"built-{variant['layers']}-{variant['scale']}"
        code, _, err = run_dus("build", "--config", recipe, out)
        assert code == 0, err
        expected = _built_scores(out, inputs, run_dus)
        assert math.isclose(variant["scores"]["perplexity"], expected["perplexity"], rel_tol=1e-4)
        assert variant["scores"]["accuracy:facts"] == expected["accuracy:facts"]
    for command in record["build"]:  # a scaled variant among the best is built from the recipe the scan wrote
        if "--config" in command:
            assert Path(command.split()[3]).is_file()
    computed = []
    monkeypatch.setattr(scaled, "weights", lambda *a, **k: computed.append(a))
    again = scan(dataclasses.replace(opts, layers=layers, scale=["0.5", "0.25"]))  # resumes: nothing to score
    assert again["plans"] == record["plans"] and computed == []


def test_scaled_recipe_scales_only_the_repeats():
    from dus.scan import scaled

    scale = {"modules": ["o"], "factor": 0.5}
    assert scaled.repeated((0, 1, 2, 1, 2, 3)) == [3, 4]
    assert scaled.recipe_layers((0, 1, 2, 1, 2, 3), 0.5, ["o"]) == [
        {"range": [0, 3]},
        {"layer": 1, "scale": scale},
        {"layer": 2, "scale": scale},
        {"range": [3, 4]},
    ]


def test_cli_writes_scan_json_heatmap_and_build_commands(tiny_model, inputs, tmp_path, run_dus):
    code, out, err = run_dus(
        "scan",
        tiny_model,
        "--text",
        inputs["text"],
        "--window",
        "64",
        "--probe",
        inputs["probe"],
        "--report-on",
        "accuracy:facts",
        "--top",
        "3",
        "--device",
        "cpu",
        "--out",
        tmp_path / "s",
    )
    assert code == 0, err
    record = json.loads((tmp_path / "s" / "scan.json").read_text())
    assert record["complete"] and record["select_on"] == "perplexity"
    ppl = [p["scores"]["perplexity"] for p in record["plans"]]
    assert ppl == sorted(ppl) and len(ppl) == 10
    # the held-out probe is measured for the base and the top 3 only
    assert "accuracy:facts" in record["base"]["scores"]
    assert [("accuracy:facts" in p["scores"]) for p in record["plans"]] == [True] * 3 + [False] * 7
    assert (tmp_path / "s" / "heatmap.png").stat().st_size > 1000
    best = record["plans"][0]["layers"]
    assert f"--layers {best}" in out and f"dus build {tiny_model}" in out
    assert record["build"][0].endswith(f"--layers {best}")


def test_resume_scores_only_what_is_missing(tiny_model, inputs, tmp_path, monkeypatch):
    from dus.scan import prefix

    opts = _opts(tiny_model, tmp_path / "s", text=inputs["text"], window=64, batch_size=1)
    first = scan(opts)
    path = tmp_path / "s" / "scan.json"
    record = json.loads(path.read_text())
    kept = record["plans"][:6]
    record.update(plans=kept, complete=False)  # as a scan killed after six plans leaves it
    path.write_text(json.dumps(record))
    calls = []
    original = prefix.Runner.hidden
    monkeypatch.setattr(prefix.Runner, "hidden", lambda self, *a, **k: calls.append(a[0]) or original(self, *a, **k))
    again = scan(opts)
    windows = _windows(tiny_model, inputs["text"])
    assert windows > 1
    # batch size 1: one call per missing plan, all its windows (of one length) together
    assert [len(batch) for batch in calls] == [windows] * (10 - 6)
    assert again["plans"] == first["plans"]
    with pytest.raises(InputError, match="other settings .*window"):
        scan(_opts(tiny_model, tmp_path / "s", text=inputs["text"], window=32))
    assert scan(_opts(tiny_model, tmp_path / "s", text=inputs["text"], window=32, force=True))["complete"]


@pytest.mark.parametrize(
    "plans",
    [
        [{"scores": {}}],
        ["0:4,1:4"],
        [{"layers": "0:4,1:4", "scores": 3}],
        [{"layers": "0:4,1:4", "scores": {"perplexity": "low"}}],
        [{"layers": "0:4,1:4", "scale": "half", "scale_modules": [], "scores": {}}],
    ],
)
def test_a_malformed_scan_json_is_refused_not_resumed(tiny_model, inputs, tmp_path, plans):
    opts = _opts(tiny_model, tmp_path / "s", text=inputs["text"], window=64, layers=["0:4,1:4"])
    scan(opts)
    path = tmp_path / "s" / "scan.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "plans": plans}))
    with pytest.raises(InputError, match="is not a scan record"):
        scan(opts)


def _windows(model, text) -> int:
    from dus.runtime import load_tokenizer
    from dus.scan.score import read_text, text_windows

    return len(text_windows(load_tokenizer(model), read_text(text), 64, None))


def test_a_prefix_cache_over_the_memory_cap_lives_in_a_file_and_scores_the_same(tiny_model, inputs, tmp_path):
    layers = ["0:4,1:4", "0:3,2:4"]
    memory = scan(_opts(tiny_model, tmp_path / "a", text=inputs["text"], window=64, layers=layers))
    on_disk = scan(_opts(tiny_model, tmp_path / "b", text=inputs["text"], window=64, layers=layers, memory="1KB"))
    assert [p["scores"] for p in memory["plans"]] == [p["scores"] for p in on_disk["plans"]]


def test_a_jsonl_text_scores_as_its_documents_joined(tiny_model, inputs, tmp_path):
    """--text FILE.jsonl reads the `text` field as `dus pretrain --data` does, documents joined by a blank line."""
    jsonl = tmp_path / "text.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in TOPICS[:5]), encoding="utf-8")
    layers = ["0:4,1:4", "0:3,2:4"]
    plain = scan(_opts(tiny_model, tmp_path / "a", text=inputs["text"], window=64, layers=layers))
    documents = scan(_opts(tiny_model, tmp_path / "b", text=str(jsonl), window=64, layers=layers))
    assert [p["scores"] for p in documents["plans"]] == [p["scores"] for p in plain["plans"]]
    assert documents["base"]["scores"] == plain["base"]["scores"]


def test_a_device_map_scores_as_one_device(tiny_model, inputs, tmp_path, monkeypatch):
    """--device-map places the model through accelerate (a model larger than one device); on this CPU-only
    machine everything lands on the CPU, and the scores are the plain run's."""
    pytest.importorskip("accelerate")
    import dus.runtime

    asked, load = [], dus.runtime._from_pretrained
    monkeypatch.setattr(dus.runtime, "_from_pretrained", lambda ref, kw, a: asked.append(dict(kw)) or load(ref, kw, a))
    kw = {"text": inputs["text"], "probe": [inputs["probe"]], "window": 64, "layers": ["0:4,1:4", "0:3,2:4"]}
    plain = scan(_opts(tiny_model, tmp_path / "a", **kw))
    mapped = scan(ScanOptions(source=str(tiny_model), out=str(tmp_path / "b"), device_map="auto", **kw))
    assert "device_map" not in asked[0] and asked[1]["device_map"] == "auto"
    assert [p["scores"] for p in mapped["plans"]] == [p["scores"] for p in plain["plans"]]


def test_spaces():
    n = 30
    assert len(make_space("single", n, [])) == 465
    assert len(make_space("dus", n, [])) == 15 and single_block(8, 22, n) in make_space("dus", n, [])
    plans = make_space("single", n, [], max_block=4, max_layers=33)
    assert plans and all(len(p) <= 33 for p in plans)
    assert layer_spec(single_block(8, 22, n)) == "0:22,8:30"
    assert layer_spec((0, 1, 1, 2, 5)) == "0:2,1:3,5"
    assert block_of(single_block(8, 22, n), n) == (8, 22) and block_of((0, 1, 3, 2), 4) is None
    assert prefix_length(single_block(8, 22, n)) == 22
    assert make_space("single", 4, ["0:2,1:4"]) == [(0, 1, 1, 2, 3)]
    with pytest.raises(InputError, match="empty"):
        make_space("single", n, [], max_layers=30)


def test_budgeted_search_finds_the_best_block_of_a_smooth_landscape():
    n, seen = 24, []

    def score(plans):
        seen.extend(plans)
        return {p: (block_of(p, n)[0] - 9) ** 2 + (block_of(p, n)[1] - 14) ** 2 for p in plans}

    plans = make_space("single", n, [])
    found = search(plans, n, 60, score, lambda a, b: a < b)
    assert len(found) == len(seen) <= 60  # each plan scored once, within the budget
    assert min(found, key=found.get) == single_block(9, 14, n)
    assert len(search(plans, n, None, score, lambda a, b: a < b)) == len(plans)


def _bad(run_dus, tmp_path, *args):
    code, out, err = run_dus("scan", *args, "--device", "cpu", "--out", tmp_path / "bad")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert not (tmp_path / "bad" / "scan.json").exists()
    return lines[-1]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ("{not json\n", "not JSON"),
        ('{"context": "a", "choices": [" b", " c"], "answer": " d"}\n', "not one of the choices"),
        ('{"context": "a", "choices": [" b", " c"], "answer": 2}\n', "`answer` must be"),
        ('{"context": "a", "choices": [" b"], "answer": 0}\n', "at least two"),
        (json.dumps({"context": "word " * 200, "choices": [" b", " c"], "answer": 0}) + "\n", "longer than the model"),
    ],
)
def test_bad_probes_are_refused(tiny_model, tmp_path, run_dus, content, message):
    probe = tmp_path / "p.jsonl"
    probe.write_text(content)
    assert message in _bad(run_dus, tmp_path, tiny_model, "--probe", probe)


def test_bad_spaces_and_names_are_refused(tiny_model, inputs, tmp_path, run_dus):
    text = ["--text", inputs["text"]]
    assert "empty" in _bad(run_dus, tmp_path, tiny_model, *text, "--max-layers", "4")
    assert "over --budget 1" in _bad(
        run_dus, tmp_path, tiny_model, *text, "--layers", "0:2,1,1,2:4", "--layers", "0:4,0", "--budget", "1"
    )
    assert "no score named" in _bad(run_dus, tmp_path, tiny_model, *text, "--select-on", "accuracy:x")
    assert "not held out" in _bad(run_dus, tmp_path, tiny_model, *text, "--report-on", "perplexity")
    assert "--text" in _bad(run_dus, tmp_path, tiny_model)
    assert "GGUF" in _bad(run_dus, tmp_path, tmp_path / "m.gguf", *text)
    assert "is not a number" in _bad(run_dus, tmp_path, tiny_model, *text, "--scale", "half")
    assert "other than 1" in _bad(run_dus, tmp_path, tiny_model, *text, "--scale", "0")
    assert "no module 'attn.c_proj'" in _bad(
        run_dus, tmp_path, tiny_model, *text, "--scale", "0.5", "--scale-modules", "attn.c_proj"
    )


def test_a_source_the_build_refuses_is_refused(tmp_path, run_dus, inputs):
    import transformers
    from models import COMMON

    config = transformers.AutoConfig.for_model("diffllama", **COMMON)  # lambda_init depends on the layer index
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "src")
    assert "computes it from the layer index" in _bad(run_dus, tmp_path, tmp_path / "src", "--text", inputs["text"])


@pytest.mark.real_model
@pytest.mark.slow
def test_smollm2_scores_equal_the_built_models(smollm2, tmp_path):
    from dus.eval.perplexity import perplexity, reference_text
    from dus.runtime import load_model, load_tokenizer

    text = tmp_path / "topics.txt"
    text.write_text(reference_text(), encoding="utf-8")
    layers = ["0:22,8:30", "0:29,28:30"]
    record = scan(_opts(smollm2, tmp_path / "s", text=str(text), max_tokens=512, layers=layers, scale=["0.5"], top=1))
    variant = next(p for p in record["plans"] if "scale" in p)  # the best plan, layer 28 again at 0.5: bf16 tensors
    assert variant["layers"] == "0:29,28:30"
    for spec in layers + ["scaled"]:
        if spec == "scaled":
            scale = {"modules": variant["scale_modules"], "factor": 0.5}
            recipe = [{"range": [0, 29]}, {"layer": 28, "scale": scale}, {"range": [29, 30]}]
            dus.api.build(str(smollm2), tmp_path / spec, layers=recipe)
        else:
            dus.api.build(str(smollm2), tmp_path / spec, layers=spec)
        model, _ = load_model(tmp_path / spec, "cpu", "auto")
        expected = perplexity(model, load_tokenizer(smollm2), text.read_text(), max_tokens=512)["perplexity"]
        plain = [p for p in record["plans"] if "scale" not in p]
        got = (variant if spec == "scaled" else next(p for p in plain if p["layers"] == spec))["scores"]
        assert math.isclose(got["perplexity"], expected, rel_tol=1e-4)
