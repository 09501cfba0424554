"""Every ``workbench`` command and every ``python -m studies.<name>`` entry point runs here: a success path and an error
path (exit code 2, no traceback), where no other test file already has it. Plus the skip policy of tests/conftest.py
and the Gemma registry model (BOS handling).

Covered elsewhere (not repeated here):
  quickstart  error: test_bad_input.py (table), test_config.py, test_paths.py
  train       success: test_tasks.py::test_workbench_train_lofit_on_arithmetic, test_train_job.py (real, every method),
              test_train_data.py (--data), test_distributed.py (--processes 2);
              error: test_bad_input.py, test_tasks.py, test_config.py, test_paths.py, test_train_data.py
  diff        success and error: test_dataset_diff_corpus.py
  fetch       error: test_bad_input.py ("fetch unknown model"), test_paths.py (unusable WORKBENCH_HOME)
  tasks       success: test_tasks.py::test_workbench_tasks_lists_every_task
  methods     success (installed console script): test_packaging.py::test_console_script_from_another_folder
  app         error: test_paths.py::test_app_runs_dir_is_a_file; the running app: test_app_browser.py
  studies     tiny configs end to end: test_packaging.py (quickstart, ``python -m``), test_real_model.py (quickstart),
              test_method_comparison.py, test_tuco_study.py, test_priming.py, test_context_knob_study.py,
              test_entity_tracking_study.py (all ``real``); own_finetune on a tiny model and the shape of every study
              folder: test_study_shapes.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from app.cli import app
from tests.conftest import tiny_llama_with_smollm2_tokenizer

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p.parent.name for p in (ROOT / "studies").glob("*/__main__.py"))  # a new study is a new folder
COMMANDS = {"quickstart", "train", "fetch", "models", "methods", "tasks", "app", "diff"}


def _invoke(*args: str):
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})  # usage errors are not cut to 80 columns
    return result.exit_code, result.output, result.exception


def _streams(*args: str) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of one command, the two streams kept apart."""
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def test_results_go_to_stdout_and_errors_to_stderr():
    """Scripts read a command's result from stdout: progress output (ours or a library's) and errors never mix in."""
    code, out, err = _streams("methods")
    assert code == 0 and {"lofit", "lora"} <= set(out.split()) and err == ""
    code, out, err = _streams("diff", "smollm2-135m-instruct", "x", "--data", "/nonexistent/corpus.jsonl")
    assert code == 2 and out == "" and err.startswith("error:"), (out, err)


def _usage_error(*args: str) -> str:
    code, output, exc = _invoke(*args)
    assert code == 2 and "Traceback" not in output and isinstance(exc, SystemExit), (code, output, exc)
    return output


# --- the command line -----------------------------------------------------------------------------------------------
def test_every_command_is_tested_here():
    """A new command must get its tests (here or elsewhere, listed in the module docstring)."""
    assert set(typer.main.get_command(app).commands) == COMMANDS
    code, output, _ = _invoke("--help")
    assert code == 0 and all(name in output for name in COMMANDS), output


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help_and_refuses_an_unknown_option(command):
    code, output, _ = _invoke(command, "--help")
    assert code == 0 and "Usage" in output and "Traceback" not in output, output
    assert "No such option" in _usage_error(command, "--no-such-option")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama saved with SmolLM2's tokenizer (a model folder any command reads)."""
    model, tok = tiny_llama_with_smollm2_tokenizer()
    out = tmp_path_factory.mktemp("commands") / "tiny"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_quickstart_on_a_tiny_model(tiny_dir, tmp_path):
    """``workbench quickstart --config`` end to end (the real model's run: test_real_model.py, in Python)."""
    select, offset = ({"max_steps": n, "batch_size_prompts": 4, "progress": False} for n in (1, 2))
    (tmp_path / "qs.json").write_text(json.dumps({"model": str(tiny_dir), "n_train": 16, "n_heldout": 8, "n_compare": 4,
                                                  "lofit": {"top_k_heads": 2, "select": select, "offset": offset}}))
    code, output, exc = _invoke("quickstart", "--config", str(tmp_path / "qs.json"), "--runs-dir", str(tmp_path / "runs"), "--name", "qs")
    assert code == 0 and exc is None, output
    run = tmp_path / "runs" / "qs"
    assert "base vs tuned" in output and str(run / "report.html") in output.replace("\n", "")
    assert (run / "results.json").is_file() and (run / "report.html").is_file() and (run / "adapter" / "adapter.json").is_file()


def test_train_with_export(tiny_dir, tmp_path):
    """``workbench train --export``: the merged model is written and matches the hooked one."""
    job = {"model": str(tiny_dir), "task_config": {"n_train": 8, "n_heldout": 4}, "method_config": {"r": 2, "alpha": 4},
           "train": {"max_steps": 1, "batch_size_prompts": 4, "lr": 1e-2, "progress": False}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    code, output, exc = _invoke("train", "lora", "--task", "arithmetic", "--config", str(tmp_path / "job.json"),
                                "--runs-dir", str(tmp_path / "runs"), "--name", "job", "--export")
    assert code == 0 and exc is None, output
    run = tmp_path / "runs" / "job"
    m = json.loads((run / "results.json").read_text())["metrics"]
    assert m["export_max_abs_logit_diff"] < 1e-4
    assert (run / "exported" / "model.safetensors").is_file() and (run / "exported" / "workbench_export.json").is_file()
    assert "exported to" in output


def test_fetch_the_default_model():
    """``workbench fetch`` (the default model: already converted by the tests that read its tokenizer)."""
    from workbench.models import ensure_model

    code, output, exc = _invoke("fetch")
    assert code == 0 and exc is None, output
    path = ensure_model("smollm2-135m-instruct")
    assert output.replace("\n", "").strip() == f"smollm2-135m-instruct: {path}" and (path / "model.safetensors").is_file()


def test_models_lists_the_registry():
    from workbench.models import REGISTRY

    code, output, _ = _invoke("models")
    assert code == 0, output
    rows = [line.split(maxsplit=1) for line in output.strip().splitlines()]  # rich prints the tab as spaces
    assert [r[0] for r in rows] == sorted(REGISTRY) and all(r[1].strip() == REGISTRY[r[0]].description for r in rows)
    assert "unexpected extra argument" in _usage_error("models", "gemma-3-270m").lower()


def test_methods_lists_every_method():
    from workbench.methods import available_methods

    code, output, _ = _invoke("methods")
    assert code == 0 and output.split() == available_methods(), output
    assert "unexpected extra argument" in _usage_error("methods", "lofit").lower()


def test_tasks_refuses_an_argument():
    assert "unexpected extra argument" in _usage_error("tasks", "arithmetic").lower()


def test_app_command_line_without_a_server(monkeypatch, tmp_path):
    """``workbench app`` hands its options to ``app.launch.main`` (no server started here) and exits with its code;
    ``app.launch.command`` builds the ``streamlit run`` line."""
    import app.launch
    from app.launch import APP, command

    calls = []
    monkeypatch.setattr(app.launch, "main", lambda *a: calls.append(a) or 0)
    code, output, exc = _invoke("app", "--base", "b", "--tuned", "t", "--port", "8765", "--headless", "--runs-dir", str(tmp_path))
    assert code == 0 and exc is None, output
    assert calls == [("b", "t", 8765, True, str(tmp_path))]
    cmd = command("b", "t", 8765, str(tmp_path))
    assert cmd[:4] == [sys.executable, "-m", "streamlit", "run"] and cmd[4] == str(APP) and Path(cmd[4]).is_file()
    assert cmd[cmd.index("--server.port") + 1] == "8765" and cmd[cmd.index("--server.headless") + 1] == "true"
    assert cmd[cmd.index("--") + 1:] == ["--base", "b", "--runs-dir", str(tmp_path), "--tuned", "t"]
    # never Streamlit's first-run e-mail prompt (tests/test_first_contact.py starts it without a terminal)
    assert "--tuned" not in command("b", None) and command("b", None)[command("b", None).index("--server.headless") + 1] == "true"
    assert cmd[cmd.index("--server.showEmailPrompt") + 1] == "false"
    calls.clear()
    assert _invoke("app", "--browser")[0] == 0 and calls[-1][3] is False
    assert _invoke("app")[0] == 0 and calls[-1][3] is None  # the launcher decides: a browser only with a display
    assert "Invalid value for '--port'" in _usage_error("app", "--port", "eighty")


# --- python -m studies.<name> ---------------------------------------------------------------------------------------
DRIVER = textwrap.dedent("""
    import contextlib, io, json, runpy, sys
    out = []
    for name, argv in json.loads(sys.argv[1]):
        sys.argv = [name] + argv
        stdout, stderr, code = io.StringIO(), io.StringIO(), 0
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                runpy.run_module(name, run_name="__main__", alter_sys=True)  # what `python -m name` does
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out.append({"name": name, "argv": argv, "code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()})
    print(json.dumps(out))
""")


def test_every_study_entry_point_helps_and_refuses_an_unknown_config(tmp_path):
    """``python -m studies.<name> --help`` and ``--config nosuch`` (exit code 2, ``error:``, nothing written) for every
    study, in one subprocess (``runpy``, as ``-m`` does), and one plain ``python -m`` for the process exit code."""
    assert len(STUDIES) >= 11 and "quickstart" in STUDIES
    calls = []
    for study in STUDIES:
        calls += [[f"studies.{study}", ["--help"]], [f"studies.{study}", ["--config", "nosuch", "--out", str(tmp_path / study)]]]
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(calls)], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in json.loads(proc.stdout.strip().splitlines()[-1]):
        where = f"{r['name']} {r['argv']}: {r}"
        assert "Traceback" not in r["stdout"] + r["stderr"], where
        if r["argv"] == ["--help"]:
            assert r["code"] == 0 and f"python -m {r['name']}" in r["stdout"] and "--config" in r["stdout"], where
        else:
            assert r["code"] == 2 and r["stderr"].startswith("error:") and "nosuch" in r["stderr"], where
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # refused before any output folder was made
    proc = subprocess.run([sys.executable, "-m", "studies.priming", "--config", "nosuch", "--out", str(tmp_path / "p")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "p").exists()


# --- the Gemma registry model ---------------------------------------------------------------------------------------
@pytest.mark.real
def test_real_gemma_fetch_and_bos():
    """``workbench fetch gemma-3-270m`` (converts the GGUF once into the model cache, ~70 s on 2 cores), then: Gemma
    needs a BOS (``ModelInfo.prepend_bos``), the task generators put it first, and it knows the capital of France."""
    from workbench.models import load_model
    from workbench.tasks import get_task

    code, output, err = _streams("fetch", "gemma-3-270m")  # transformers' progress bars go to stderr
    assert code == 0 and output.startswith("gemma-3-270m: ") and output.count("\n") == 1, (output, err)
    model, tok, info = load_model("gemma-3-270m", device="cpu")
    assert info.prepend_bos is True and "Gemma3" in info.architecture and tok.bos_token_id is not None
    task = get_task("entity_tracking")
    split = task.generate(tok, task.config(n_boxes=3, n_train=8, n_heldout=4), prepend_bos=info.prepend_bos)
    for part in ("train", "heldout"):
        for e in task.to_examples(split, part):
            assert e.prompt_ids[0] == tok.bos_token_id and e.prompt_ids[1] != tok.bos_token_id  # one BOS, first
    ids = [tok.bos_token_id, *tok("The capital of France is", add_special_tokens=False).input_ids]
    with torch.no_grad():
        top5 = model(torch.tensor([ids])).logits[0, -1].topk(5).indices.tolist()
    assert " Paris" in [tok.decode(i) for i in top5], [tok.decode(i) for i in top5]


# --- the skip policy (tests/conftest.py) ----------------------------------------------------------------------------
SUITE = '''
import pytest

def test_reasoned():
    pytest.skip("no widget here")

def test_unreasoned():
    pytest.skip()

@pytest.mark.skip
def test_marked_without_reason():
    pass

@pytest.mark.xfail(reason="a known bug", strict=False)
def test_known_bug():
    assert False

@pytest.mark.parametrize("why", ["the optional extra is not installed", "something else"])
def test_optional_extra(why):
    pytest.skip(why)  # allow-listed only with the reason the list gives

def test_passes():
    pass
'''


@pytest.mark.parametrize("ci,workers", [(False, 0), (True, 0), (True, 2)], ids=["local", "WORKBENCH_CI", "WORKBENCH_CI-xdist"])
def test_skip_policy(ci, workers, pytester, monkeypatch):
    """The policy holds in pytest-xdist workers too (`make test` runs the suite with ``-n auto``): their reports,
    turned into failures there, reach the controller as failures."""
    import tests.conftest as policy

    monkeypatch.setattr(policy, "ALLOWED_SKIPS", {"test_suite.py::test_optional_extra": r"optional extra"})
    if ci:
        monkeypatch.setenv(policy.CI_ENV, "1")
    else:
        monkeypatch.delenv(policy.CI_ENV, raising=False)
    pytester.makeconftest("import tests.conftest as policy\n"  # xdist workers are new processes: set their list too
                          "policy.ALLOWED_SKIPS = {'test_suite.py::test_optional_extra': r'optional extra'}\n"
                          "from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport\n")
    pytester.makepyfile(test_suite=SUITE, test_missing='import pytest\npytest.importorskip("no_such_module_for_the_skip_policy")\n')
    if workers:
        monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the workers import tests.conftest
    xdist = ["-n", str(workers)] if workers else []
    result = pytester.runpytest("-p", "no:cacheprovider", "-rA", "--continue-on-collection-errors", *xdist)
    text = result.stdout.str()
    assert "a skip must state its reason; skipped: Skipped" in text  # pytest.skip() (a test failure)
    assert "a skip must state its reason; skipped: unconditional skip" in text  # a bare skip marker (a setup error)
    if ci:  # only the allow-listed skip stays a skip; the module-level importorskip becomes a collection error
        result.assert_outcomes(passed=1, failed=3, errors=2, skipped=1, xfailed=1)
        assert "skips fail unless listed" in text and "skipped: something else" in text and "no_such_module_for_the_skip_policy" in text
    else:
        result.assert_outcomes(passed=1, failed=1, errors=1, skipped=4, xfailed=1)
