"""The method-comparison study's tiny config end to end on the real model (CI size), and its resume."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.real


def test_tiny_study_runs_and_resumes(tmp_path):
    from studies.method_comparison.study import StudyConfig, run

    cfg = StudyConfig.load("tiny")
    record = run(cfg, tmp_path, log=lambda *_: None)
    table = {(r["task"], r["variant"]): r for r in record["metrics"]["table"]}
    expected = {(t, v) for t in cfg.tasks for v, spec in [("base", {}), *cfg.variants.items()] if t in spec.get("tasks", [t])}
    assert set(table) == expected and ("entity_tracking", "caft_pca") not in table
    for (task, variant), row in table.items():
        assert 0.0 <= row["id_accuracy"] <= 1.0
        assert ("ood_accuracy" in row) == (task == "spurious_cue")
        assert (row["n_trainable"] > 0) == (variant not in ("base", "caft_test_time_only"))
    assert table[("entity_tracking", "lofit")]["n_trainable"] == 14 * 64
    caft = [r for r in record["metrics"]["runs"] if r["variant"] == "caft_pca"]
    assert caft and [int(layer) for layer in caft[0]["caft_components"]] == [6]
    assert sorted(p.name for p in (tmp_path / "caft_directions").iterdir()) == ["spurious_cue_seed0_pca.safetensors", "spurious_cue_seed0_random.safetensors"]
    assert (tmp_path / "table.md").read_text().startswith("| task | variant")
    names = ["entity_tracking_accuracy", "entity_tracking_params", "spurious_cue_accuracy", "spurious_cue_params"]
    for suffix in (".html", ".json"):  # HTML to open, plotly JSON for the app (studies.common.write_figure_files)
        assert sorted(p.stem for p in (tmp_path / "figures").glob(f"*{suffix}")) == names
    before = json.loads((tmp_path / "runs.json").read_text())["runs"]
    again = run(cfg, tmp_path, log=lambda *_: pytest.fail("a finished run was repeated"))
    assert again["metrics"]["runs"] == before


def test_bad_study_config_is_refused(tmp_path):
    from studies.method_comparison.study import StudyConfig
    from workbench.errors import ConfigError

    with pytest.raises(ConfigError, match="unregistered methods"):
        StudyConfig(variants={"x": {"method": "magic"}})
    with pytest.raises(ConfigError, match="unknown task"):
        StudyConfig(tasks={"boxes": {}})
    with pytest.raises(ConfigError, match="unknown key"):
        StudyConfig(variants={"x": {"method": "lofit", "lr": 1}})
    with pytest.raises(ConfigError, match="CAFT variants only"):
        StudyConfig(variants={"x": {"method": "lofit", "directions": "pca"}})
    with pytest.raises(ConfigError, match="no study config"):
        StudyConfig.load("nope")
