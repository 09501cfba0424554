"""Bad paths (issue 13, class 2): run names, ``--runs-dir``, ``--out`` and ``WORKBENCH_HOME``.

Every case must fail before any model loads (``load_model`` is replaced by a function that fails the test), with
exit code 2 and one line naming the option or variable, no traceback, and nothing written anywhere: the whole
temporary tree is listed before and after. We run as root, which ignores permission bits, so a read-only folder
is simulated by replacing ``os.access`` (it answers "not writable" for paths under that folder).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from workbench.errors import ConfigError, NonFiniteLossError
from workbench.runs import FAILED_FILE, check_output_dir, check_run_name, run_folder


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _read_only(monkeypatch, folder: Path) -> None:
    """Simulate a read-only ``folder`` (root ignores mode bits): ``os.access(.., W_OK)`` is False under it."""
    real = os.access

    def access(path, mode, *a, **k):
        if mode & os.W_OK and Path(path).resolve().is_relative_to(folder.resolve()):
            return False
        return real(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)


@pytest.fixture
def sandbox(tmp_path):
    """``tmp/work`` holding a regular file ``afile``, a read-only candidate ``ro/`` and an existing ``runs/plain``."""
    work = tmp_path / "work"
    (work / "ro").mkdir(parents=True)
    (work / "afile").write_text("not a folder\n")
    (work / "runs").mkdir()
    (work / "runs" / "plain").write_text("a regular file where a run folder would go\n")
    return work


# (id, runs_dir relative to the sandbox, run name (a callable gets the sandbox), option the message must name, read-only folder)
CASES = [
    ("dotdot", "runs", "../escape", "--name", None),
    ("nested", "runs", "a/b", "--name", None),
    ("absolute", "runs", lambda w: str(w / "abs-run"), "--name", None),
    ("backslash", "runs", "a\\b", "--name", None),
    ("parent", "runs", "..", "--name", None),
    ("current", "runs", ".", "--name", None),
    ("empty", "runs", "", "--name", None),
    ("nul", "runs", "x\x00y", "--name", None),
    ("newline", "runs", "x\ny", "--name", None),
    ("too-long", "runs", "n" * 300, "--name", None),
    ("run-folder-is-a-file", "runs", "plain", "--name", None),
    ("runs-dir-is-a-file", "afile", "ok", "--runs-dir", None),
    ("runs-dir-under-a-file", "afile/sub", "ok", "--runs-dir", None),
    ("runs-dir-read-only", "ro", "ok", "--runs-dir", "ro"),
    ("runs-dir-not-creatable", "ro/new/deeper", "ok", "--runs-dir", "ro"),
]


def _case(sandbox: Path, runs: str, name, ro, monkeypatch):
    if ro:
        _read_only(monkeypatch, sandbox / ro)
    return sandbox / runs, name(sandbox) if callable(name) else name


@pytest.mark.parametrize("command", ["train", "quickstart"])
@pytest.mark.parametrize("case, runs, name, option, ro", CASES, ids=[c[0] for c in CASES])
def test_cli_refuses_bad_paths_before_loading(command, case, runs, name, option, ro, sandbox, no_model, monkeypatch):
    runs_dir, name = _case(sandbox, runs, name, ro, monkeypatch)
    before = _tree(sandbox.parent)
    args = ["train", "lofit"] if command == "train" else ["quickstart"]
    result = CliRunner().invoke(app, [*args, "--runs-dir", str(runs_dir), "--name", name])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, AssertionError)
    flat = result.output.replace("\n", "")
    assert "error:" in flat and option in flat, result.output
    assert _tree(sandbox.parent) == before  # nothing written, inside or outside the runs folder


@pytest.mark.parametrize("case, runs, name, option, ro", CASES, ids=[c[0] for c in CASES])
def test_python_api_refuses_bad_paths_before_loading(case, runs, name, option, ro, sandbox, no_model, monkeypatch):
    from studies.quickstart import QuickstartConfig, run_quickstart
    from workbench.train_job import TrainJobConfig, run_train_job

    runs_dir, name = _case(sandbox, runs, name, ro, monkeypatch)
    before = _tree(sandbox.parent)
    for run in (lambda: run_train_job(TrainJobConfig(), runs_dir, name, log=lambda *_: None),
                lambda: run_quickstart(QuickstartConfig(), runs_dir, name, log=lambda *_: None)):
        with pytest.raises(ConfigError, match=option):
            run()
    assert _tree(sandbox.parent) == before


@pytest.mark.parametrize("name", ["run-1", "my.run", "quickstart-20260101-000000", "ünïcode"])
def test_good_run_names_pass(name):
    assert check_run_name(name) == name


@pytest.mark.parametrize("out, ro", [("afile", None), ("afile/sub", None), ("ro", "ro"), ("ro/new", "ro")])
def test_study_out_is_checked_up_front(out, ro, sandbox, monkeypatch, capsys):
    from studies.common import study_main

    if ro:
        _read_only(monkeypatch, sandbox / ro)
    before = _tree(sandbox.parent)
    calls = []
    rc = study_main("demo", None, lambda c: calls.append(("load", c)), lambda cfg, o: calls.append(("run", o)),
                    lambda r: None, ["--config", "tiny", "--out", str(sandbox / out)])
    err = capsys.readouterr().err
    assert rc == 2 and "--out" in err and "Traceback" not in err, err
    assert calls == [] and _tree(sandbox.parent) == before  # neither the config nor the study ran


def test_study_failure_leaves_no_empty_out_folder(tmp_path, capsys):
    from studies.common import study_main

    def run(cfg, out):
        Path(out, "figures").mkdir(parents=True)
        raise ConfigError("study went wrong")

    rc = study_main("demo", None, lambda c: c, run, lambda r: None, ["--out", str(tmp_path / "new" / "out")])
    assert rc == 2 and "study went wrong" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_study_success_writes_into_new_out(tmp_path):
    from studies.common import study_main

    def run(cfg, out):
        Path(out).mkdir(parents=True)
        Path(out, "results.json").write_text("{}")
        return {"config": cfg}

    reported = []
    rc = study_main("demo", None, lambda c: c, run, reported.append, ["--config", "tiny", "--out", str(tmp_path / "out")])
    assert rc == 0 and reported == [{"config": "tiny"}]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.json"]


# ------------------------------------------------------------------ WORKBENCH_HOME
@pytest.mark.parametrize("home, ro", [("afile", None), ("afile/sub", None), ("ro", "ro"), ("ro/new/home", "ro")])
def test_unusable_workbench_home(home, ro, sandbox, monkeypatch):
    """``workbench fetch`` (and ``train``, whose run folder must not appear) name WORKBENCH_HOME, convert nothing."""
    from workbench.models import cache

    monkeypatch.setattr(cache, "_convert", lambda *a, **k: pytest.fail("converted into an unusable WORKBENCH_HOME"))
    monkeypatch.setenv("WORKBENCH_HOME", str(sandbox / home))
    if ro:
        _read_only(monkeypatch, sandbox / ro)
    before = _tree(sandbox.parent)
    for args in (["fetch"], ["train", "lofit", "--runs-dir", str(sandbox / "runs"), "--name", "job"]):
        result = CliRunner().invoke(app, args)
        flat = result.output.replace("\n", "")
        assert result.exit_code == 2 and "WORKBENCH_HOME" in flat and "Traceback" not in flat, result.output
    with pytest.raises(ConfigError, match="WORKBENCH_HOME"):
        cache.ensure_model()
    assert _tree(sandbox.parent) == before


def test_app_runs_dir_is_a_file(sandbox):
    result = CliRunner().invoke(app, ["app", "--runs-dir", str(sandbox / "afile"), "--headless"])
    assert result.exit_code == 2 and "--runs-dir" in result.output.replace("\n", ""), result.output


# ------------------------------------------------------------------ failed runs
class _FakeTask:
    """A task with no tokenizer or model behind it (the run-folder rule is all that is tested here)."""

    def config(self, **kw):
        return kw

    def generate(self, tok, cfg, prepend_bos=False):
        return "split"

    def to_examples(self, split, *a):
        return []

    def evaluate(self, model, split, pad_id=0):
        return {"accuracy": 0.5}


@pytest.fixture
def fake_job(monkeypatch):
    """``run_train_job`` with a fake model and task; ``finetune`` writes ``write`` (if any) into its folder, then diverges."""
    import workbench.finetune
    import workbench.models
    import workbench.train_job as tj

    class Tok:
        pad_token_id = 0

    class Info:
        prepend_bos = False

    monkeypatch.setattr(tj, "get_task", lambda name: _FakeTask())
    monkeypatch.setattr(workbench.models, "load_model", lambda *a, **k: (object(), Tok(), Info()))
    state = {"write": None}

    def finetune(*a, out_dir, **k):
        if state["write"]:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / state["write"]).write_text("checkpoint")
        raise NonFiniteLossError("loss is nan at step 3")

    monkeypatch.setattr(workbench.finetune, "finetune", finetune)
    return state


def test_failed_run_without_files_leaves_nothing(fake_job, tmp_path):
    from workbench.train_job import TrainJobConfig, run_train_job

    with pytest.raises(NonFiniteLossError, match="nan"):
        run_train_job(TrainJobConfig(), tmp_path / "runs" / "deep", "job", log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []  # the run folder and the runs folders it created are gone


def test_failed_run_with_checkpoints_is_kept_with_failed_json(fake_job, tmp_path):
    from workbench.artifacts import read_json
    from workbench.train_job import TrainJobConfig, run_train_job

    fake_job["write"] = "step-2.safetensors"
    with pytest.raises(NonFiniteLossError):
        run_train_job(TrainJobConfig(), tmp_path, "job", log=lambda *_: None)
    run = tmp_path / "job"
    assert (run / "train" / "step-2.safetensors").is_file()
    failed = read_json(run / FAILED_FILE)
    assert failed["error"] == "NonFiniteLossError" and "nan" in failed["message"]


def test_failed_resume_keeps_the_existing_folder(fake_job, tmp_path):
    from workbench.train_job import TrainJobConfig, run_train_job

    (tmp_path / "job").mkdir()  # an existing (here: empty) run folder is never removed
    with pytest.raises(NonFiniteLossError):
        run_train_job(TrainJobConfig(), tmp_path, "job", log=lambda *_: None)
    assert (tmp_path / "job" / FAILED_FILE).is_file()


def test_run_folder_success_clears_failed_json(tmp_path):
    run = tmp_path / "r"
    with pytest.raises(KeyError), run_folder(run):
        (run / "ckpt").write_text("x")
        raise KeyError("boom")
    assert json.loads((run / FAILED_FILE).read_text())["error"] == "KeyError"
    with run_folder(run):
        pass
    assert sorted(p.name for p in run.iterdir()) == ["ckpt"]


def test_check_output_dir_accepts_new_and_existing(tmp_path):
    assert check_output_dir(tmp_path) == tmp_path
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []  # checking creates nothing


@pytest.mark.real
def test_real_failed_run_keeps_checkpoints_and_rerun_resumes(tmp_path, monkeypatch):
    """A train job that fails after training keeps its checkpoints and records ``failed.json``; the rerun with
    the same ``--name`` resumes from the checkpoint, succeeds and clears ``failed.json``."""
    import workbench.finetune
    import workbench.methods
    from workbench.artifacts import read_json

    job = tmp_path / "job.json"
    job.write_text(json.dumps({"method_config": {"r": 2, "alpha": 4}, "train": {"max_steps": 2, "batch_size_prompts": 4, "checkpoint_every_steps": 1},
                               "task_config": {"n_boxes": 3, "n_train": 8, "n_heldout": 8, "seed": 0}}))
    args = ["train", "lora", "--config", str(job), "--runs-dir", str(tmp_path / "runs"), "--name", "job"]
    real_save = workbench.methods.save_intervention
    monkeypatch.setattr(workbench.methods, "save_intervention", lambda *a, **k: (_ for _ in ()).throw(ConfigError("disk said no")))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "disk said no" in result.output, result.output
    run = tmp_path / "runs" / "job"
    assert read_json(run / FAILED_FILE)["message"] == "disk said no"
    assert (run / "train" / "checkpoints" / "step-000002").is_dir()

    monkeypatch.setattr(workbench.methods, "save_intervention", real_save)
    resumed, real_finetune = [], workbench.finetune.finetune
    monkeypatch.setattr(workbench.finetune, "finetune", lambda *a, **k: resumed.append(r := real_finetune(*a, **k)) or r)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert resumed[0].train_result.resumed_from_step == 2
    assert (run / "results.json").is_file() and not (run / FAILED_FILE).exists()
