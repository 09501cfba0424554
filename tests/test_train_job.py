"""``workbench train <method> --config job.json`` on the real model, for every registered method (tiny budgets; entity tracking
here, every task in tests/test_tasks.py)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from app.cli import app
from workbench.methods import available_methods

pytestmark = pytest.mark.real

TINY = {"train": {"max_steps": 1, "lr": 1e-3, "batch_size_prompts": 4}, "task": "entity_tracking", "task_config": {"n_boxes": 3, "n_train": 8, "n_heldout": 8, "seed": 0}}
#: smaller-than-default settings where a method's defaults would be slow; a method not listed runs its defaults
METHOD_CONFIGS = {
    "lofit": {"top_k_heads": 0.05, "select": {"max_steps": 1, "batch_size_prompts": 4}},
    "neft": {"budget_fraction": 0.002, "selection": "random"},
    "lora": {"r": 4, "alpha": 8},
    "full": {},
}


@pytest.mark.parametrize("method", available_methods())
def test_workbench_train_runs_each_method(method, tmp_path):
    from workbench.artifacts import read_json
    from workbench.methods.caft import CaftIntervention, random_directions, save_directions
    from workbench.models import load_model

    config = METHOD_CONFIGS.get(method, {})
    if method == "caft":  # CAFT reads its directions from a file (any finder writes one with save_directions)
        _, _, info = load_model("smollm2-135m-instruct")
        dims = info.dims
        ablation = CaftIntervention.from_directions({12: random_directions(dims.d_model, 2, seed=0)}, dims, source="random")
        config = {**save_directions(ablation, tmp_path / "dirs.safetensors"), "inner": "lora", "inner_config": {"r": 4, "alpha": 8}}
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"model": "smollm2-135m-instruct", "method_config": config, **TINY}))
    result = CliRunner().invoke(app, ["train", method, "--config", str(job), "--runs-dir", str(tmp_path / "runs"), "--name", "job"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "job"
    record = read_json(run / "results.json")
    m = record["metrics"]
    assert 0 <= m["base_accuracy"] <= 1 and 0 <= m["tuned_accuracy"] <= 1 and m["n_trainable_parameters"] > 0
    assert (run / "adapter" / "adapter.safetensors").exists()
    if method == "caft":
        assert m["details"]["ablation"]["method"] == "caft" and m["details"]["inner"] == "lora"
        assert (run / "ablation" / "adapter.safetensors").exists()
