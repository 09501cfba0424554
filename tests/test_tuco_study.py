"""studies/tuco: configs, statistics, plots (fast) and the tiny config end to end + its notebook (real model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import plotly.graph_objects as go
import pytest

from studies.tuco.figures import alpha_sweep, component_norms, tuco_by_group
from studies.tuco.study import TucoStudyConfig, group_stats, mann_whitney, run
from tests.conftest import execute_notebook
from tests.test_notebooks import check_default_section
from workbench.errors import ConfigError

STUDY_DIR = Path(__file__).resolve().parents[1] / "studies" / "tuco"


@pytest.mark.parametrize("name", ["tiny", "default", "full"])
def test_shipped_configs_load(name):
    cfg = TucoStudyConfig.load(name)
    assert len(cfg.unrelated_prompts) >= 2 and cfg.n_heldout >= 2
    assert 0.0 in cfg.alphas and 1.0 in cfg.alphas  # the end points are checked against base / tuned
    assert cfg.to_dict()["lofit"]["offset"]["max_steps"] >= 1
    if name != "tiny":
        assert cfg.alphas[:6] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]


def test_bad_configs_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no study config"):
        TucoStudyConfig.load("huge")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"unrelated_prompts": ["a", "b"], "n_heldout": 4, "typo_key": 1}))
    with pytest.raises(ConfigError, match="unknown keys"):
        TucoStudyConfig.load(bad)
    for kwargs in ({"alphas": [float("nan")]}, {"alphas": []}, {"unrelated_prompts": ["only one"]},
                   {"batch_size_prompts": 0}):
        with pytest.raises(ConfigError):
            TucoStudyConfig(**{"unrelated_prompts": ["a", "b"], **kwargs})


def test_statistics():
    s = group_stats([1.0, 2.0, 3.0, 10.0])
    assert (s["n"], s["mean"], s["median"], s["min"], s["max"]) == (4, 4.0, 2.5, 1.0, 10.0)
    assert math.isclose(s["std"], math.sqrt(((9 + 4 + 1 + 36) / 3)))
    separated = mann_whitney([5.0, 6.0, 7.0, 8.0], [1.0, 2.0, 3.0])
    assert separated["u"] == 12.0 and separated["common_language_effect"] == 1.0
    assert separated["p_in_task_greater"] < separated["p_two_sided"] < 0.1
    reverse = mann_whitney([1.0, 2.0, 3.0], [5.0, 6.0, 7.0, 8.0])
    assert reverse["u"] == 0.0 and reverse["common_language_effect"] == 0.0 and reverse["p_in_task_greater"] > 0.9


def test_plots_return_figures():
    figs = [
        tuco_by_group({"in-task": [0.1, 0.2], "unrelated": [0.3, 0.05]}),
        alpha_sweep([0, 0.5, 1], {"accuracy": [0.2, 0.5, 0.9]}),
        component_norms(["embedding", "layer 0"], {"‖FTC‖ in-task": [0.0, 1.5], "‖PTC‖ in-task": [1.0, 3.0]}),
    ]
    assert all(isinstance(f, go.Figure) for f in figs)
    assert [len(f.data) for f in figs] == [2, 1, 2]
    assert figs[1].layout.xaxis.title.text.startswith("α")


def _without_timing(record: dict) -> dict:
    return {k: v for k, v in record["metrics"].items() if k != "timing_s"}


@pytest.mark.real
def test_tiny_study_and_notebook(tmp_path, monkeypatch):
    """The tiny config end to end, then the notebook (same config, same seed) must give the same numbers."""
    pytest.importorskip("nbclient")

    record = run(TucoStudyConfig.tiny(), tmp_path / "run", log=lambda _msg: None)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["metrics"]["tuco"]["in_task"]["mean"] == record["metrics"]["tuco"]["in_task"]["mean"]
    assert {"run_info", "meta_info", "metrics"} <= saved.keys() and saved["run_info"]["config"]["n_heldout"] == 8
    assert saved["meta_info"]["models"]["tuned"]["weight_hash"] != saved["meta_info"]["models"]["base"]["weight_hash"]
    m = saved["metrics"]
    for group in ("in_task", "unrelated"):
        values = m["tuco"][group]["values"]
        assert len(values) == (8 if group == "in_task" else 4) and all(0 < v < 1 for v in values)
    mw = m["tuco"]["mann_whitney"]
    assert 0 <= mw["p_two_sided"] <= 1 and 0 <= mw["common_language_effect"] <= 1
    assert len(m["alpha_sweep"]["accuracy"]) == 3 and len(m["per_component"]["labels"]) == 31
    ex = m["exactness"]
    for key, value in ex.items():
        if "logit_diff" in key:
            assert value < 1e-3, key  # α end points: exact here (0.0); the merge: fp32 rounding
        elif "reconstruction" in key:
            assert value < 1e-5 * ex[key.replace("reconstruction_max_abs_err", "max_abs_final_residual")], key
    for name in ("tuco_by_group", "alpha_sweep", "component_norms"):
        html = (tmp_path / "run" / "figures" / f"{name}.html").read_text()
        assert 'src="plotly.min.js"' in html
    assert (tmp_path / "run" / "figures" / "plotly.min.js").stat().st_size > 1_000_000

    nb = execute_notebook(STUDY_DIR / "tuco.ipynb", "TUCO_NOTEBOOK_OUT", tmp_path / "notebook", monkeypatch)
    again = json.loads((tmp_path / "notebook" / "results.json").read_text())
    assert _without_timing(again) == _without_timing(saved)
    check_default_section(nb, "tuco")  # the notebook opens with results/default.json, drawn by figures.py
