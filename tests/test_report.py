"""``gpt2clf report``: every section of a finished run in one self-contained HTML page."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from gpt2clf.cli import main
from gpt2clf.errors import DataError, UserError
from gpt2clf.report.run_report import ScoredSplit, confident_errors, confused_pairs, score_run, write_run_report
from test_explain import assert_self_contained_page_renders


@pytest.fixture(scope="module")
def scored(planted_run_dir: Path) -> ScoredSplit:
    return score_run(planted_run_dir)


def test_report_shows_every_section_of_the_run(planted_run_dir: Path, tmp_path: Path, browser, capsys) -> None:
    out = tmp_path / "report.html"
    assert main(["report", str(planted_run_dir), "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    html = out.read_text(encoding="utf-8")
    for heading in ("Results", "Learning curves", "Per-class results (test)", "Confusion", "Most confident errors",
                    "Data", "Configuration", "Timings and hardware"):
        assert f"<h2>{heading}</h2>" in html
    metrics = json.loads((planted_run_dir / "metrics.json").read_text())
    assert f"{metrics['test']['accuracy']:.4f}" in html
    # one learning-curve row per epoch, and the data table has the three splits
    assert len(re.findall(r'<tr><td class="num">\d+</td><td class="num">', html)) == metrics["epochs_completed"]
    for split in ("train", "validation", "test"):
        assert f"<tr><td>{split}</td>" in html
    assert html.count("data:image/png;base64,") == 3  # curves, confusion matrix, data summary
    assert "torch" in html and "CPU" in html
    assert_self_contained_page_renders(browser, out)


def test_default_report_goes_into_the_run_folder(planted_run_dir: Path, scored: ScoredSplit) -> None:
    path = write_run_report(planted_run_dir, scored=scored)
    assert path == planted_run_dir / "report.html" and path.is_file()
    assert not list(planted_run_dir.glob(".report.html.*"))  # the atomic write left no temporary file


def test_report_lists_the_most_confident_errors_with_highlighted_tokens(planted_run_dir: Path, scored: ScoredSplit,
                                                                         tmp_path: Path) -> None:
    # Relabel 12 test documents so the (accurate) model gets them wrong with various confidence.
    labels = list(scored.labels)
    for i in range(12):
        labels[i] = (labels[i] + 1) % len(scored.label_names)
    wrong = ScoredSplit(scored.texts, labels, scored.probabilities, scored.label_names)
    order = confident_errors(wrong)
    assert len(order) == 10
    confidence = [wrong.probabilities[i].max() for i in order]
    assert confidence == sorted(confidence, reverse=True)

    html = write_run_report(planted_run_dir, tmp_path / "r.html", scored=wrong).read_text(encoding="utf-8")
    section = html.split("<h2>Most confident errors</h2>")[1].split("<h2>")[0]
    assert section.count('class="card"') == 10
    assert section.count('class="doc"') == 10
    assert "rgba(" in section and "convergence delta" in section  # shaded by integrated gradients
    first = order[0]
    assert f"#{first}: true <b>{wrong.label_names[labels[first]]}</b>" in section
    assert "Most confused pairs" in html and "No test document was misclassified" not in html


def test_confused_pairs_are_the_largest_off_diagonal_cells() -> None:
    pairs = confused_pairs([[5, 3, 0], [1, 7, 4], [0, 0, 9]], ["a", "b", "c"], k=2)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("b", "c", 4), ("a", "b", 3)]
    assert pairs[0]["share"] == pytest.approx(4 / 12)


def test_a_scored_split_must_be_consistent() -> None:
    with pytest.raises(DataError):
        ScoredSplit(["a", "b"], [0, 1], np.ones((3, 2)) / 2, ["x", "y"])
    with pytest.raises(DataError):
        ScoredSplit(["a"], [2], np.ones((1, 2)) / 2, ["x", "y"])


@pytest.mark.parametrize("remove", [None, "metrics.json", "model/model.safetensors"])
def test_a_missing_or_unfinished_run_is_a_one_line_error(planted_run_dir: Path, tmp_path: Path, capsys,
                                                         remove: str | None) -> None:
    target = tmp_path / "run"
    if remove is None:
        target = tmp_path / "nope"
    else:
        shutil.copytree(planted_run_dir, target)
        (target / remove).unlink()
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpt2clf: error: ") and len(err.strip().splitlines()) == 1
    assert (remove or "run folder not found") in err
    with pytest.raises(UserError):
        write_run_report(target)
