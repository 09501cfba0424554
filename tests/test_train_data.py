"""``workbench train <method> --data train.jsonl [--eval-data eval.jsonl]``: every method on your data (tiny model with
SmolLM2's tokenizer), results.json's data record, bad input refused before any model loads with no run folder left, and
one real-model run on the sourdough data set (``studies/own_finetune``)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from tests.conftest import tiny_llama_with_smollm2_tokenizer
from workbench.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "studies" / "own_finetune" / "data"
TRAIN = {"max_steps": 2, "batch_size_prompts": 4, "lr": 1e-2, "progress": False}
LOFIT = {"top_k_heads": 2, "select": {"max_steps": 1, "batch_size_prompts": 4, "progress": False}}


def _first(path: Path, n: int, out: Path) -> str:
    out.write_text("".join(path.read_text().splitlines(keepends=True)[:n]))
    return str(out)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama saved with SmolLM2's tokenizer (chat template included)."""
    model, tok = tiny_llama_with_smollm2_tokenizer()
    d = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {"train": _first(DATA / "train.jsonl", 10, d / "train.jsonl"), "eval": _first(DATA / "eval.jsonl", 4, d / "eval.jsonl"),
            "train_chat": _first(DATA / "train_chat.jsonl", 8, d / "train_chat.jsonl"),
            "eval_chat": _first(DATA / "eval_chat.jsonl", 4, d / "eval_chat.jsonl")}


def _read(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def _method_config(method: str, tiny_dir: Path, tmp_path: Path) -> dict:
    if method == "caft":  # CAFT trains on any data; it needs its concept directions as a file
        from workbench.methods.caft import CaftIntervention, random_directions, save_directions
        from workbench.models import load_model

        dims = load_model(str(tiny_dir), device="cpu")[2].dims
        ablation = CaftIntervention.from_directions({1: random_directions(dims.d_model, 2, seed=0)}, dims, source="random")
        return {**save_directions(ablation, tmp_path / "dirs.safetensors"), "inner": "lora", "inner_config": {"r": 2, "alpha": 4}}
    return {"lofit": LOFIT, "neft": {"budget_fraction": 0.0005, "selection": "random"}, "lora": {"r": 2, "alpha": 4}}.get(method, {})


# --- the job on a tiny model --------------------------------------------------------------------------------------------
def test_data_job_holds_out_a_seeded_split_and_records_the_data(tiny_dir, files, tmp_path):
    from workbench.train_job import TrainJobConfig, run_train_job

    cfg = TrainJobConfig(method="lofit", model=str(tiny_dir), data=files["train"], eval_fraction=0.3, split_seed=1,
                         method_config=LOFIT, train=TRAIN, max_length=48)
    record = _read(run_train_job(cfg, tmp_path, "job", log=lambda *_: None))
    m, data = record["metrics"], record["metrics"]["data"]
    assert record["run_info"]["config"]["data"] == files["train"] and record["run_info"]["config"]["task"] is None
    assert data["eval_source"] == "held_out" and data["eval_fraction"] == 0.3 and data["split_seed"] == 1
    assert data["train"]["sha256"] == hashlib.sha256(Path(files["train"]).read_bytes()).hexdigest() == data["eval"]["sha256"]
    assert (data["train"]["n_rows"], data["eval"]["n_rows"]) == (7, 3) and data["train"]["shape"] == "prompt_completion"
    assert data["train"]["n_examples"] == 7 and data["train"]["n_truncated"] == 7 and data["train"]["n_dropped"] == 0
    assert data["overlap"] == {"identical_rows": 0, "identical_prompts": 0, "n_eval_rows": 3, "same_shape": True}
    for side in ("base", "tuned"):
        assert m[side]["answer_loss"] > 0 and m[side]["perplexity"] > 1
        assert 0 <= m[side]["exact_match_answer_eos"] <= m[side]["exact_match_answer"] <= 1  # answer + EOS asks for more
        assert m[side]["n_examples"] == 3
    assert m["base_answer_loss"] == m["base"]["answer_loss"] and len(m["losses"]) == 2
    assert (tmp_path / "job" / "adapter" / "adapter.safetensors").exists()


@pytest.mark.parametrize("method", ["lofit", "neft", "lora", "full", "caft"])
def test_every_method_trains_on_chat_data(method, tiny_dir, files, tmp_path):
    from workbench.methods import available_methods
    from workbench.train_job import TrainJobConfig, run_train_job

    assert method in available_methods()
    cfg = TrainJobConfig(method=method, model=str(tiny_dir), data=files["train_chat"], eval_data=files["eval_chat"],
                         method_config=_method_config(method, tiny_dir, tmp_path), train=TRAIN, max_length=64)
    m = _read(run_train_job(cfg, tmp_path, method, log=lambda *_: None))["metrics"]
    assert m["data"]["train"]["shape"] == "messages" and m["data"]["eval_source"] == "file"
    assert m["n_trainable_parameters"] > 0 and m["tuned"]["answer_loss"] > 0


def test_every_registered_method_is_covered_here():
    from workbench.methods import available_methods

    assert set(available_methods()) == {"lofit", "neft", "lora", "full", "caft"}


def test_cli_trains_on_mapped_columns(tiny_dir, files, tmp_path):
    rows = [json.loads(line) for line in Path(files["train"]).read_text().splitlines()]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps({"q": r["prompt"], "a": r["completion"]}) + "\n" for r in rows))
    (tmp_path / "job.json").write_text(json.dumps({"model": str(tiny_dir), "method_config": {"r": 2, "alpha": 4}, "train": TRAIN}))
    result = CliRunner().invoke(app, ["train", "lora", "--data", str(tmp_path / "qa.jsonl"), "--prompt-field", "q", "--completion-field", "a",
                                      "--max-length", "32", "--eval-fraction", "0.2", "--config", str(tmp_path / "job.json"),
                                      "--runs-dir", str(tmp_path / "runs"), "--name", "job", "--export"])
    assert result.exit_code == 0, result.output
    assert "held-out answer loss" in result.output and "exact match" in result.output and "answer + EOS" in result.output
    assert "exported to" in result.output
    m = _read(tmp_path / "runs" / "job")["metrics"]
    assert m["export_max_abs_logit_diff"] < 1e-4
    data = m["data"]
    assert data["train"]["columns"] == {"prompt": "q", "completion": "a"} and data["max_length"] == 32
    assert data["train"]["n_rows"] == 8 and data["eval"]["n_rows"] == 2


# --- bad input: refused before the model loads, nothing written ---------------------------------------------------------
def _write(tmp_path: Path, name: str, content: bytes | str) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


BAD = {
    "missing field": ("d.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n', r"d\.jsonl: row 2 \(line 2\): missing field 'completion'"),
    "empty file": ("d.jsonl", "", r"d\.jsonl: the file is empty"),
    "wrong type": ("d.jsonl", '{"prompt": "a", "completion": 5}\n', r"d\.jsonl: row 1 \(line 1\), field 'completion': expected text"),
    "invalid utf-8": ("d.jsonl", b'{"prompt": "a", "completion": "\xff"}\n', r"d\.jsonl: invalid UTF-8 at line 1"),
    "no assistant turn": ("d.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n',
                          r"d\.jsonl: row 1 \(line 1\), field 'messages': the chat has no assistant turn"),
    "unknown extension": ("d.txt", "prompt,completion\n", r"d\.txt: unknown data file extension"),
    "missing file": (None, None, r"nope\.jsonl: data file not found"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_cli_refuses_bad_data_naming_file_row_and_field(case, tmp_path, no_model):
    name, content, pattern = BAD[case]
    path = _write(tmp_path, name, content) if name else str(tmp_path / "nope.jsonl")
    result = CliRunner().invoke(app, ["train", "lofit", "--data", path, "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and (result.exception is None or isinstance(result.exception, SystemExit)), result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(pattern, " ".join(result.output.split())), result.output
    assert not (tmp_path / "runs").exists()


def test_cli_refuses_task_and_data_together(tmp_path, files, no_model):
    result = CliRunner().invoke(app, ["train", "lofit", "--task", "arithmetic", "--data", files["train"], "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "--task 'arithmetic' and --data" in result.output and "not both" in result.output
    (tmp_path / "job.json").write_text(json.dumps({"task": "arithmetic"}))
    result = CliRunner().invoke(app, ["train", "lofit", "--data", files["train"], "--config", str(tmp_path / "job.json"),
                                      "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "either a task" in result.output, result.output
    assert not (tmp_path / "runs").exists()


def test_refuse_overflow_leaves_no_run_folder(tiny_dir, files, tmp_path):
    from workbench.train_job import TrainJobConfig, run_train_job

    cfg = TrainJobConfig(method="lora", model=str(tiny_dir), data=files["train"], eval_data=files["eval"], max_length=16,
                         overflow="refuse", method_config={"r": 2, "alpha": 4}, train=TRAIN)
    with pytest.raises(ConfigError, match=r"train\.jsonl: row 1 \(line 1\): \d+ tokens .* exceed max_length 16"):
        run_train_job(cfg, tmp_path / "runs", "job", log=lambda *_: None)
    assert not (tmp_path / "runs").exists()


def test_job_config_rules():
    from workbench.train_job import TrainJobConfig

    assert TrainJobConfig().task == "entity_tracking" and TrainJobConfig(data="x.jsonl").task is None
    cases = [({"data": "x.jsonl", "task": "arithmetic"}, "either a task"), ({"data": "x.jsonl", "task_config": {"n_train": 4}}, "either a task"),
             ({"eval_data": "e.jsonl"}, "need data"), ({"data": "x.jsonl", "overflow": "cut"}, "overflow must be"),
             ({"data": "x.jsonl", "eval_fraction": 1.5}, "eval_fraction"), ({"data": "x.jsonl", "max_length": 1}, "max_length"),
             ({"data": "x.jsonl", "data_shape": "table"}, "data_shape"), ({"data": "x.jsonl", "data_fields": {"answer": "a"}}, "column-mapping"),
             ({"data": " "}, "data is empty"), ({"data": "x.jsonl", "train": {"loss": "dpo"}}, "rejected answer")]
    for fields, fragment in cases:
        with pytest.raises(ConfigError, match=fragment):
            TrainJobConfig(**fields)


# --- the real model -------------------------------------------------------------------------------------------------------
@pytest.mark.real
def test_real_lofit_on_the_sourdough_data_lowers_the_eval_answer_loss(tmp_path):
    """``workbench train lofit --data train.jsonl --eval-data eval.jsonl`` on SmolLM2, kept small for a 2-core CPU:
    48 tokens per example (the prompt's tail and the answer's head, where the baker's voice starts), 1 + 5 steps of
    2 examples, eval on the first 4 eval rows. Measured: answer loss 4.27 -> 3.77 nats/token (perplexity 71 -> 43)."""
    eval_file = _first(DATA / "eval.jsonl", 4, tmp_path / "eval4.jsonl")
    job = {"method_config": {"top_k_heads": 0.05, "select": {"max_steps": 1, "batch_size_prompts": 2, "lr": 5e-3, "progress": False}},
           "train": {"max_steps": 5, "batch_size_prompts": 2, "lr": 5e-2, "progress": False}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    result = CliRunner().invoke(app, ["train", "lofit", "--data", str(DATA / "train.jsonl"), "--eval-data", eval_file, "--max-length", "48",
                                      "--config", str(tmp_path / "job.json"), "--runs-dir", str(tmp_path / "runs"), "--name", "sourdough"])
    assert result.exit_code == 0, result.output
    m = _read(tmp_path / "runs" / "sourdough")["metrics"]
    data = m["data"]
    assert data["train"]["n_rows"] == 400 and data["eval"]["n_rows"] == 4 and data["train"]["shape"] == "prompt_completion"
    assert data["train"]["sha256"] == hashlib.sha256((DATA / "train.jsonl").read_bytes()).hexdigest()
    assert data["train"]["n_truncated"] == 400 and data["max_length"] == 48
    assert data["overlap"]["identical_rows"] == 0 and data["overlap"]["identical_prompts"] == 0
    assert m["tuned"]["answer_loss"] < m["base"]["answer_loss"], (m["base"], m["tuned"])
    assert m["tuned"]["perplexity"] < m["base"]["perplexity"]
    assert 0 <= m["tuned"]["exact_match_answer_eos"] <= m["tuned"]["exact_match_answer"] <= 1
