"""Few-shot reporting: the table, the PNG plot and W&B logging (with and without a run)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from mmpretrain.fewshot import EpisodeResult, flatten_results, log_results_to_wandb, plot_accuracy_vs_shots
from mmpretrain.fewshot import results_table as table


def result(method: str, shots: int, accuracies: list[float]) -> EpisodeResult:
    return EpisodeResult(method, 5, shots, 15, np.array(accuracies))


@pytest.fixture
def results() -> dict[str, dict[int, EpisodeResult]]:
    return {
        "simpleshot": {1: result("simpleshot", 1, [60, 70, 65]), 5: result("simpleshot", 5, [80, 90, 85])},
        "protonet": {1: result("protonet", 1, [50, 60, 55]), 5: result("protonet", 5, [70, 80, 75])},
    }


def test_table_rows_show_mean_and_ci(results):
    text = table(results)
    lines = text.splitlines()
    assert lines[0].split("|")[1].strip() == "method" and "accuracy (%)" in lines[0]
    assert len(lines) == 2 + 4
    assert lines[2].split("|")[1].strip() == "protonet"                       # sorted by method, then shots
    ci = 1.96 * np.std([60, 70, 65]) / np.sqrt(3)
    assert f"65.00 ± {ci:.2f}" in text
    assert len({len(line) for line in lines}) == 1                            # aligned columns


def test_flatten_accepts_nesting_and_rejects_junk(results):
    assert len(flatten_results([results, result("knn", 1, [100.0])])) == 5
    with pytest.raises(TypeError, match="expected EpisodeResult"):
        flatten_results({"a": 3})


def test_plot_writes_a_png(results, tmp_path):
    path = plot_accuracy_vs_shots(results, tmp_path / "plots" / "fewshot.png")
    assert path == tmp_path / "plots" / "fewshot.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    assert [p.name for p in path.parent.iterdir()] == ["fewshot.png"]         # no temporary file left
    with pytest.raises(ValueError, match="no few-shot results"):
        plot_accuracy_vs_shots([], tmp_path / "empty.png")


def test_wandb_without_a_run_is_a_logged_no_op(results, caplog, monkeypatch):
    import wandb

    monkeypatch.setattr(wandb, "run", None)
    with caplog.at_level(logging.INFO, logger="mmpretrain.fewshot.report"):
        assert log_results_to_wandb(results) is False
    assert "No active W&B run" in caplog.text


def test_wandb_logs_table_plot_and_scalars(results):
    import wandb

    class FakeRun:
        def __init__(self) -> None:
            self.logged: list[dict] = []

        def log(self, payload: dict) -> None:
            self.logged.append(payload)

    run = FakeRun()
    assert log_results_to_wandb(results, run=run, key="eval/fewshot") is True
    (payload,) = run.logged
    assert isinstance(payload["eval/fewshot/results"], wandb.Table)
    assert len(payload["eval/fewshot/results"].data) == 4
    assert isinstance(payload["eval/fewshot/accuracy_vs_shots"], wandb.Image)
    assert payload["eval/fewshot/simpleshot/5way_5shot/acc"] == pytest.approx(85.0)
    assert payload["eval/fewshot/protonet/5way_1shot/ci95"] == pytest.approx(results["protonet"][1].ci95)
