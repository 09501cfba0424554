"""Every study folder has one shape (``README.md`` with the question, the command and what was measured or "not
measured yet"; ``__main__.py`` through :func:`studies.common.study_main`; ``study.py``; ``figures.py``;
``configs/{tiny,default}.json``; ``results/default.json`` once measured, drawn by the study's own figures), and the
studies without a ``real`` test elsewhere run here: own_finetune end to end on a tiny model, caft_spurious's figures."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from tests.conftest import tiny_llama_with_smollm2_tokenizer

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p.name for p in (ROOT / "studies").iterdir() if (p / "__init__.py").is_file() and p.name != "benchmarks")
SHAPE = ("README.md", "__main__.py", "study.py", "figures.py", "configs/tiny.json", "configs/default.json")
#: files a study may still lack, and why (remove the entry once the file is written)
PENDING: dict[tuple[str, str], str] = {}  # (study, file) -> why it is not there yet


@pytest.mark.parametrize("study", STUDIES)
def test_every_study_folder_has_the_same_shape(study):
    folder = ROOT / "studies" / study
    missing = [f for f in SHAPE if not (folder / f).is_file() and (study, f) not in PENDING]
    assert not missing, f"studies/{study} lacks {missing}"
    assert "study_main(" in (folder / "__main__.py").read_text()
    readme = folder / "README.md"
    if readme.is_file():
        text = readme.read_text()
        assert f"python -m studies.{study}" in text, f"studies/{study}/README.md gives no command"
        assert "measured" in text.lower(), f"studies/{study}/README.md says nothing of what was measured"
        assert (folder / "results" / "default.json").is_file() or "not measured yet" in text.lower() or (study, "results/default.json") in PENDING, \
            f"studies/{study} has no results/default.json and its README does not say 'not measured yet'"


@pytest.mark.parametrize("study", [s for s in STUDIES if (ROOT / "studies" / s / "results" / "default.json").is_file()])
def test_the_committed_default_record_is_drawn_by_the_study_figures(study):
    record = json.loads((ROOT / "studies" / study / "results" / "default.json").read_text())
    figs = importlib.import_module(f"studies.{study}.figures").figures(record)
    assert figs and all(hasattr(f, "to_json") for f in figs.values())


def test_caft_spurious_figures_draw_every_arm():
    from studies.caft_spurious.figures import figures

    arm = lambda a: {"heldout_acc": a, "ood_acc": 1 - a, "heldout_logit_diff": a, "ood_logit_diff": -a}  # noqa: E731
    record = {"metrics": {name: arm(0.1 * i) for i, name in enumerate(("base", "standard", "test_time_only", "caft_pca", "caft_random"))}}
    record["metrics"]["pca_choice"] = {6: {"indices": [0]}}
    figs = figures(record)
    assert list(figs) == ["1_accuracy", "2_logit_diff"]
    assert list(figs["1_accuracy"].data[0].x) == ["base", "standard", "test_time_only", "caft_pca", "caft_random"]
    assert list(figs["1_accuracy"].data[1].y) == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.6])


def test_own_finetune_trains_each_method_through_the_train_job(tmp_path):
    """``python -m studies.own_finetune --config <tiny model> --out``: one run folder per method, the study's record with
    base and tuned answer loss per method, and its figures."""
    from studies.own_finetune.__main__ import main

    model, tok = tiny_llama_with_smollm2_tokenizer()
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    step = {"max_steps": 1, "batch_size_prompts": 4, "checkpoint_every_steps": 0, "progress": False}
    (tmp_path / "cfg.json").write_text(json.dumps({"model": str(tmp_path / "tiny"), "max_length": 32, "methods": {
        "lora": {"method_config": {"r": 2, "alpha": 4}, "train": step},
        "lofit": {"method_config": {"top_k_heads": 2, "select": step, "offset": step}}}}))
    assert main(["--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    methods = record["metrics"]["methods"]
    assert list(methods) == ["lora", "lofit"] and record["run_info"]["config"]["study"] == "own_finetune"
    for name, m in methods.items():
        assert m["base"]["answer_loss"] > 0 and m["tuned"]["answer_loss"] > 0 and m["n_trainable_parameters"] > 0
        assert (tmp_path / "out" / name / "adapter" / "adapter.json").is_file()
    assert record["metrics"]["data"]["train"]["n_rows"] == 400 and record["metrics"]["data"]["eval"]["n_rows"] == 80
    assert sorted(p.name for p in (tmp_path / "out" / "figures").glob("*.json")) == ["1_answer_loss.json", "2_exact_match.json",
                                                                                   "3_training_loss.json"]
