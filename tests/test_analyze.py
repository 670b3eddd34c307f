"""`dus analyze` on a tiny seeded LLaMA with a tokenizer trained on Python's own docs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from figures import assert_drawn
from models import bpe_tokenizer, tiny_llama
from refusal import assert_refused

from dus.analyze import analyze, recommend_overlap
from dus.analyze.data import token_windows
from dus.analyze.recommend import dus_layers, explain
from dus.cli import main
from dus.errors import InputError

N = 8


def _text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An 8-layer LLaMA (hidden 64), seeded, with a 512-token BPE that adds BOS, saved like a real model."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tok = bpe_tokenizer([_text()[:100_000]], 512, {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"})
    tok.save_pretrained(path)
    tiny_llama(tok, N, vocab_size=512, max_position_embeddings=256).save_pretrained(path)
    text = path / "text.txt"
    text.write_text(_text()[100_000:140_000])
    return path


@pytest.fixture(scope="module")
def result(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis")
    r = analyze(
        tiny, (tiny / "text.txt").read_text(), max_tokens=640, seq_len=64, batch_size=4, device="cpu", output=out
    )
    r["_out"] = out
    return r


def test_json_shapes_and_metric_properties(result):
    saved = json.loads((result["_out"] / "analysis.json").read_text())
    assert saved["num_layers"] == N and saved["sequences"] == 10 and saved["seq_len"] == 64 and saved["tokens"] == 640
    assert len(saved["influence"]) == N
    assert all(0.0 <= v <= 2.0 for v in saved["influence"])
    for key in ("distance", "distance_all_tokens"):
        d = torch.tensor(saved[key])
        assert d.shape == (N + 1, N + 1)
        assert torch.equal(d, d.T) and torch.all(d.diagonal() == 0)
        assert d.min() >= 0 and d.max() <= 1
        assert torch.all(d[~torch.eye(N + 1, dtype=torch.bool)] > 0)  # a random layer moves every state
    assert saved["recommendation"]["overlap"] == result["recommendation"]["overlap"]


def test_metrics_match_an_independent_forward(tiny, result):
    """Influence and last-token distance from hooks on every layer, in HF's indexing, pre-final-norm."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    windows = token_windows(AutoTokenizer.from_pretrained(tiny), (tiny / "text.txt").read_text(), 640, 64)
    states = []
    hooks = [model.model.embed_tokens.register_forward_hook(lambda m, i, o: states.append(o))]
    hooks += [
        layer.register_forward_hook(lambda m, i, o: states.append(o[0] if isinstance(o, tuple) else o))
        for layer in model.model.layers
    ]
    with torch.no_grad():
        model(windows)
    for h in hooks:
        h.remove()
    h = torch.stack(states, 0).double()  # [n+1, seqs, t, d]: h[0] = embeddings, h[i+1] = output of layer i
    cos = torch.nn.functional.cosine_similarity(h[:-1], h[1:], dim=-1)  # [n, seqs, t]
    assert torch.allclose(torch.tensor(result["influence"], dtype=torch.float64), (1 - cos).mean((1, 2)), atol=1e-5)
    last = h[:, :, -1]  # [n+1, seqs, d]
    for i in range(N + 1):
        for j in range(N + 1):
            c = torch.nn.functional.cosine_similarity(last[i], last[j], dim=-1).clamp(-1, 1)
            expected = 0.0 if i == j else (torch.arccos(c) / math.pi).mean().item()
            assert result["distance"][i][j] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    "budget",
    [
        {},
        {"target_layers": 14},
        {"target_layers": 15, "slack_layers": 4},
        {"target_layers": 100, "slack_layers": 100},
        {"target_params": "layers:12"},
        {"target_params": "layers:14", "slack_layers": 2},
    ],
)
def test_recommendation_is_the_budgeted_argmin(result, budget):
    d, lp, other = result["distance"], result["layer_params"], result["other_params"]
    budget = dict(budget)
    if isinstance(budget.get("target_params"), str):  # a parameter budget sitting exactly on a DUS size
        budget["target_params"] = other + lp[0] * int(budget["target_params"].split(":")[1])
    rec = recommend_overlap(d, lp, other, **budget)
    size = {m: (2 * (N - m), other + sum(lp[i] for i in dus_layers(N, m))) for m in range(1, N // 2)}
    limit_layers = budget.get("target_layers", 3 * N // 2)
    fits = [
        m
        for m in size
        if (size[m][1] <= budget["target_params"] if "target_params" in budget else size[m][0] <= limit_layers)
    ]
    top = max(size[m][0] for m in fits)
    allowed = [m for m in fits if size[m][0] >= top - budget.get("slack_layers", 0)]
    expected = min(allowed, key=lambda m: (d[N - m][m], m))
    assert rec["overlap"] == expected
    assert (rec["layers"], rec["params"]) == size[expected]
    assert rec["seam_distance"] == d[N - expected][expected]
    assert {r["overlap"] for r in rec["candidates"] if r["allowed"]} == set(allowed)


def _seam_matrix(n: int, seams: dict[int, float]) -> list[list[float]]:
    """An (n+1)x(n+1) distance matrix, zero but for the given overlaps' seams (symmetric)."""
    d = [[0.0] * (n + 1) for _ in range(n + 1)]
    for m, v in seams.items():
        d[n - m][m] = d[m][n - m] = v
    return d


def test_seam_indexing_on_a_hand_made_matrix():
    """Seam of m joins hidden_states[n-m] (out of layer n-m-1) to hidden_states[m] (into layer m)."""
    n = 8
    d = _seam_matrix(n, {1: 0.5, 2: 0.4, 3: 0.1})
    d[3][3 + 1] = d[4][3] = 0.01  # not a seam of any overlap: must not matter
    rec = recommend_overlap(d, [10] * n, 5, target_layers=14, slack_layers=8)
    assert (rec["overlap"], rec["layers"], rec["params"]) == (3, 10, 105)
    assert [r["seam"] for r in rec["candidates"]] == [[6, 1], [5, 2], [4, 3]]
    assert recommend_overlap(d, [10] * n, 5, target_layers=14)["overlap"] == 1  # no slack: the budget decides
    with pytest.raises(InputError, match="smaller than the smallest DUS"):
        recommend_overlap(d, [10] * n, 5, target_params=104)


def test_printed_table_fills_the_allowed_column():
    """Every candidate row says yes or no, as analysis.json's `allowed` does; the recommended row is marked too."""
    n = 8
    d = _seam_matrix(n, {1: 0.5, 2: 0.4, 3: 0.1})
    rec = recommend_overlap(d, [10] * n, 5, target_layers=12)  # 12 layers: only m=2 fits at the top
    rows = explain(rec).split("allowed\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [r.split()[5] for r in rows] == ["yes" if c["allowed"] else "no" for c in rec["candidates"]]
    assert [r.split()[5] for r in rows] == ["no", "yes", "no"]
    assert rows[1].endswith("<- recommended") and not rows[0].endswith("recommended")


def test_plots_are_pngs(result):
    for name in ("influence.png", "distance.png"):
        assert_drawn(result["_out"] / name)


def test_windows_start_with_bos_and_fill_seq_len(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    w = token_windows(tok, "one two three " * 500, max_tokens=300, seq_len=64)
    assert w.shape == (4, 64) and torch.all(w[:, 0] == tok.bos_token_id)
    short = token_windows(tok, "tiny text", max_tokens=300, seq_len=64)
    assert short.shape[0] == 1 and short.shape[1] < 64


def test_cli_writes_outputs_and_explains(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    main(
        [
            "analyze",
            str(tiny),
            "--text",
            str(tiny / "text.txt"),
            "--max-tokens",
            "256",
            "--seq-len",
            "64",
            "--output",
            str(out),
            "--target-params",
            "0.55M",
            "--slack-layers",
            "2",
            "--device",
            "cpu",
        ]
    )
    stdout, stderr = capsys.readouterr()
    assert "error" not in stderr
    assert "recommended overlap m=" in stdout and "seam distance" in stdout
    saved = json.loads((out / "analysis.json").read_text())
    rec = saved["recommendation"]
    assert rec["params"] <= 550_000 and rec["layers"] in (10, 12) and rec["budget"]["by"] == "params"
    assert f"recommended overlap m={rec['overlap']}" in stdout
    last = stdout.strip().splitlines()[-1]  # ends with the build command of the recommendation (issue 25, 13)
    assert last == f"build it: dus build {tiny} {tiny.name}-dus{rec['layers']} --overlap {rec['overlap']}"


def test_the_build_command_analyze_prints_builds_the_recommendation(tiny, tmp_path, capsys, monkeypatch):
    import shlex

    monkeypatch.chdir(tmp_path)
    main(
        [
            "analyze",
            str(tiny),
            "--text",
            str(tiny / "text.txt"),
            "--max-tokens",
            "256",
            "--seq-len",
            "64",
            "--device",
            "cpu",
        ]
    )
    line = capsys.readouterr().out.strip().splitlines()[-1].removeprefix("build it: ")
    rec = json.loads((tmp_path / "dus-analysis" / "analysis.json").read_text())["recommendation"]
    main(shlex.split(line)[1:])
    built = json.loads((tmp_path / f"{tiny.name}-dus{rec['layers']}" / "dus_plan.json").read_text())
    assert built["plan"]["recipe"] == {"name": "dus", "overlap": rec["overlap"]}
    assert built["output"]["num_layers"] == rec["layers"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--text", "{tmp}/missing.txt"], "no such file"),
        (["--text", "{text}", "--target-layers", "9"], "smaller than the smallest DUS"),
        (["--text", "{text}", "--target-params", "1000"], "smaller than the smallest DUS"),
        (["--text", "{text}", "--target-layers", "12", "--target-params", "1M"], "not both"),
        (["--text", "{text}", "--target-params", "lots"], "--target-params"),
        (["--text", "{text}", "--seq-len", "1"], "--seq-len"),
        (["--text", "{tmp}/empty.txt"], "need at least 2"),
    ],
    ids=[
        "missing-text",
        "layers-too-small",
        "params-too-small",
        "two-budgets",
        "bad-count",
        "bad-seq-len",
        "empty-text",
    ],
)
def test_bad_input_is_exit_2_and_one_line(tiny, tmp_path, capsys, args, message):
    (tmp_path / "empty.txt").write_text("")
    args = [a.format(tmp=tmp_path, text=tiny / "text.txt") for a in args]
    with pytest.raises(SystemExit) as e:
        main(["analyze", str(tiny), *args, "--output", str(tmp_path / "out"), "--device", "cpu"])
    assert_refused(e.value.code, capsys.readouterr().err, message, outputs=tmp_path / "out")


def test_not_a_model_directory(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("some text " * 50)
    with pytest.raises(SystemExit) as e:
        main(["analyze", str(tmp_path), "--text", str(tmp_path / "t.txt")])
    assert_refused(e.value.code, capsys.readouterr().err, "no config.json")


@pytest.mark.real_model
def test_smollm2_recommendation(smollm2, tmp_path, capsys):
    """The fetched SmolLM2-135M-Instruct (30 layers): default budget 1.5x -> 44 layers, m=8; record the table."""
    model = smollm2
    text = tmp_path / "topics.txt"
    text.write_text(_text())
    main(
        [
            "analyze",
            str(model),
            "--text",
            str(text),
            "--max-tokens",
            "512",
            "--seq-len",
            "128",
            "--batch-size",
            "4",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    stdout = capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "analysis.json").read_text())
    rec = saved["recommendation"]
    with capsys.disabled():
        print("\n" + stdout)
    assert saved["num_layers"] == 30 and saved["tokens"] == 512
    assert (rec["overlap"], rec["layers"]) == (8, 44)
    seams = {r["overlap"]: r["seam_distance"] for r in rec["candidates"]}
    assert seams[1] > seams[8] > seams[14] > 0  # the seam is smoother the closer the joined layers
    assert max(saved["influence"]) == saved["influence"][0]  # layer 0 rewrites the embedding
