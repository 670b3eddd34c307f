"""`dus report RUN...` overlays several runs' loss and eval curves in one labelled PNG (issue 25, item 13)."""

from __future__ import annotations

import json

import matplotlib.axes

from dus.train.report import curves


def _run(directory, losses, evals):
    directory.mkdir(parents=True)
    rows = [{"step": i + 1, "loss": v} for i, v in enumerate(losses)] + [{"step": s, "eval_loss": v} for s, v in evals]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def _legend_labels(monkeypatch) -> list:
    seen = []
    original = matplotlib.axes.Axes.legend

    def legend(self, *args, **kwargs):
        seen.append(self.get_legend_handles_labels()[1])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "legend", legend)
    return seen


def test_several_runs_in_one_labelled_figure(tmp_path, run_dus, monkeypatch):
    a = _run(tmp_path / "study" / "dus-m8", [3.0, 2.5, 2.2], [(0, 3.1), (3, 2.4)])
    b = _run(tmp_path / "study" / "stack-x2", [3.2, 2.9], [(0, 3.3), (2, 2.8)])
    labels = _legend_labels(monkeypatch)
    code, out, err = run_dus("report", a, b)
    assert code == 0, err
    png = tmp_path / "study" / "loss.png"
    assert out.strip() == f"wrote {png}" and png.read_bytes()[:4] == b"\x89PNG"
    assert labels == [["dus-m8: train loss", "dus-m8: eval loss", "stack-x2: train loss", "stack-x2: eval loss"]]
    code, out, _ = run_dus("report", a, b, "--output", tmp_path / "both.png")
    assert code == 0 and (tmp_path / "both.png").is_file()


def test_one_run_keeps_its_own_figure(tmp_path, run_dus, monkeypatch):
    a = _run(tmp_path / "a", [3.0, 2.5], [])
    labels = _legend_labels(monkeypatch)
    code, out, err = run_dus("report", a)
    assert code == 0 and out.strip() == f"wrote {a / 'loss.png'}", err
    assert labels == [["train loss"]]


def test_repeated_names_are_told_apart_by_their_path(tmp_path):
    a = _run(tmp_path / "x" / "pretrain", [1.0], [])
    b = _run(tmp_path / "y" / "pretrain", [2.0], [])
    assert [c["label"] for c in curves([a, b])] == ["x/pretrain", "y/pretrain"]


def test_a_run_without_metrics_is_one_line(tmp_path, run_dus):
    a = _run(tmp_path / "a", [3.0], [])
    (tmp_path / "b").mkdir()
    code, _, err = run_dus("report", a, tmp_path / "b")
    assert code == 2 and err.startswith(f"error: no metrics.jsonl in {tmp_path / 'b'}")
