"""Bad input to ``workbench train --data`` (train and eval files, one process or ``--processes 2``), the hints every
command gives in its own flags, and the warnings a data job gives and records (issue 26). The rows run through
:func:`test_bad_input_table.check_row`: exit code 2, one ``error: ...`` line, no traceback, nothing written, no model
loaded and no process started (``no_model``), and every ``--flag`` the output names one its command has."""

from __future__ import annotations

import json
import re
import sys

import pytest
from typer.testing import CliRunner

from app.cli import app
from test_bad_input import unknown_flags
from test_bad_input_table import Row, check_row, model_dirs, tiny_loaded  # noqa: F401 - fixtures used by the rows

#: a data job on the tiny model (the rows give --data / --eval-data)
DATA_JOB = {"model": "{tiny}", "train": {"max_steps": 2, "batch_size_prompts": 4, "progress": False}}
GOOD = "".join(json.dumps({"prompt": f"Box {c} holds", "completion": f" the {c}."}) + "\n" for c in "ABCDEF")
BAD = '{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": 5}\n'
CHAT = "".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"}]}) + "\n"
               for i in range(4))
FILES = {"good.jsonl": GOOD, "bad.jsonl": BAD, "chat.jsonl": CHAT,
         "robot.jsonl": CHAT + json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}) + "\n",
         "content.jsonl": '{"content": "hello there"}\n{"content": "general kenobi"}\n',
         "empty_text.jsonl": '{"text": "Hello world"}\n{"text": "  "}\n', "one_token.jsonl": '{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n'}
ROW_LINE = r"row 2 \(line 2\), field 'completion': expected text"


def _data(*args: str, processes: int = 1, config: dict | None = None, **row) -> Row:
    """A ``workbench train lofit --config <data job> <args>`` row (``--processes`` when more than one)."""
    extra = ["--processes", str(processes)] if processes > 1 else []
    return Row(["train", "lofit", "--config", "{cfg}", "--runs-dir", "{runs}", *args, *extra], config=config or DATA_JOB, files=FILES, **row)


ROWS: dict[str, Row] = {
    # every refusal comes before any process starts (item 2: --processes validates first)
    "--processes 2, --data with a bad row": _data("--data", "{tmp}/bad.jsonl", processes=2, expect=rf"bad\.jsonl: {ROW_LINE}"),
    "--processes 2, --data missing": _data("--data", "{tmp}/missing.jsonl", processes=2, expect=r"missing\.jsonl: data file not found"),
    "--processes 2, --eval-data missing": _data("--data", "{tmp}/good.jsonl", "--eval-data", "{tmp}/missing.jsonl", processes=2,
                                                expect=r"missing\.jsonl: data file not found"),
    "--processes 2, --eval-data with a bad row": _data("--data", "{tmp}/good.jsonl", "--eval-data", "{tmp}/bad.jsonl", processes=2,
                                                       expect=rf"bad\.jsonl: {ROW_LINE}"),
    "--processes 2, model folder missing": _data("--data", "{tmp}/good.jsonl", processes=2, config={**DATA_JOB, "model": "{tmp}/nowhere"},
                                                 expect=r"Cannot load model"),
    "--processes 2, task job, model folder missing": Row(["train", "lofit", "--config", "{cfg}", "--runs-dir", "{runs}", "--processes", "2"],
                                                         config={"model": "{tmp}/nowhere"}, expect=r"Cannot load model"),
    "--processes 2, model folder without config.json": _data("--data", "{tmp}/good.jsonl", processes=2, config={**DATA_JOB, "model": "{tmp}"},
                                                             expect=r"no config\.json"),
    # the eval file, one process
    "--eval-data missing": _data("--data", "{tmp}/good.jsonl", "--eval-data", "{tmp}/missing.jsonl", expect=r"missing\.jsonl: data file not found"),
    "--eval-data with a bad row": _data("--data", "{tmp}/good.jsonl", "--eval-data", "{tmp}/bad.jsonl", expect=rf"bad\.jsonl: {ROW_LINE}"),
    "--eval-data a folder": _data("--data", "{tmp}/good.jsonl", "--eval-data", "{tmp}", expect=r"is a folder"),
    # chat roles, as training and as eval data
    "chat role unknown in --data": _data("--data", "{tmp}/robot.jsonl", expect=r"robot\.jsonl: row 5 \(line 5\), field messages\[1\]\.role: 'robot'"),
    "chat role unknown in --eval-data": _data("--data", "{tmp}/chat.jsonl", "--eval-data", "{tmp}/robot.jsonl", expect=r"'robot' is not a chat role"),
    # the text shape through the job
    "text row empty": _data("--data", "{tmp}/empty_text.jsonl", expect=r"row 2 \(line 2\), field 'text': is empty"),
    "text rows of one token": _data("--data", "{tmp}/one_token.jsonl", loads=True, expect=r"nothing to train on after tokenizing"),
    # hints name the command's own flags
    "train: columns that fit no shape": _data("--data", "{tmp}/content.jsonl",
                                              expect=r"map other column names with --prompt-field/--completion-field/--messages-field/--text-field$"),
    "diff: columns that fit no shape": Row(["diff", "{tiny}", "{tiny}", "--data", "{tmp}/content.jsonl", "--runs-dir", "{runs}"], files=FILES,
                                           expect=r"map other column names with --prompt-field/--completion-field/--messages-field/--text-field$"),
    "fetch an existing folder": Row(["fetch", "{tiny}"], expect=r"is a local folder, not a built-in model name.*loads as it is"),
    "diff: adapter trained on another base": Row(["diff", "{app_tuned}", "{app_run}", "--data", "{tmp}/content.jsonl", "--text-field", "content",
                                                  "--runs-dir", "{runs}"], files=FILES, loads=True,
                                                 expect=r"was trained on .*; load it onto the model it was trained on$"),
}


@pytest.mark.parametrize("row", [pytest.param(row, id=name) for name, row in ROWS.items()])
def test_bad_input_launch_table(row: Row, tmp_path, model_dirs, tiny_loaded, tiny_dirs, request, monkeypatch):  # noqa: F811
    app_paths = {"app_base": str(tiny_dirs[0]), "app_tuned": str(tiny_dirs[1]), "app_run": str(tiny_dirs[2])}
    message = check_row(row, tmp_path, model_dirs, tiny_loaded, request, monkeypatch, extra_paths=app_paths)
    assert "allow_other_model" not in message and "keeps its checkpoints" not in message, message
    assert message.count("error:") == 1, message


def test_the_rows_cover_issue_26():
    names = " ".join(ROWS)
    for word in ("--processes 2, --data", "--processes 2, --eval-data", "--eval-data missing", "--eval-data with a bad row",
                 "chat role unknown in --data", "chat role unknown in --eval-data", "text", "diff:", "train:", "fetch an existing"):
        assert word in names, word


def test_no_model_patches_every_loader(no_model, tiny_dirs):
    """The fixture the rows rely on refuses a load on every path: our loader wherever a module bound it, the pair
    loader (which calls the loader ``workbench.models.tuned`` imported), transformers beneath them, the launcher."""
    import transformers

    from app.launch_train import launch_command
    from workbench.models import load_model
    from workbench.models.tuned import load_pair

    bound = [name for name, module in sys.modules.items() if module is not None and name.split(".")[0] in ("workbench", "studies", "probes")
             and getattr(vars(module).get("load_model"), "__module__", None) == "workbench.models.load"]
    assert not bound, f"load_model left unpatched in {bound}"
    for call in (lambda: load_model(tiny_dirs[0]), lambda: load_pair(str(tiny_dirs[0]), str(tiny_dirs[2]), "cpu"),
                 lambda: transformers.AutoModelForCausalLM.from_pretrained(str(tiny_dirs[0])),
                 lambda: launch_command(2, tiny_dirs[0], "lofit", tiny_dirs[0], "x", 0)):
        with pytest.raises(AssertionError, match="invalid input"):
            call()


def test_data_job_warnings_on_stderr_and_in_results(tmp_path, model_dirs):  # noqa: F811
    """The text shape trained through the job, with the training file also given as --eval-data, repeated rows and
    rows over --max-length: each said once on stderr (not stdout) and recorded in results.json."""
    rows = [{"text": "Hello world, hello app."}] * 3 + [{"text": f"Row {i} is short."} for i in range(5)]
    rows.append({"text": "Paris is the capital of France. " * 12})
    (tmp_path / "text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "job.json").write_text(json.dumps({**DATA_JOB, "model": str(model_dirs["tiny"])}))
    data = str(tmp_path / "text.jsonl")
    result = CliRunner().invoke(app, ["train", "lofit", "--config", str(tmp_path / "job.json"), "--data", data, "--eval-data", data,
                                      "--max-length", "16", "--runs-dir", str(tmp_path / "runs"), "--name", "run"])
    assert result.exit_code == 0, result.output
    warned = [line.removeprefix("warning: ") for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert "warning:" not in result.stdout
    assert any(re.search(r"text\.jsonl: 2 of 9 rows repeat an earlier row", w) for w in warned), warned
    assert any(re.search(r"the eval data is the training file itself", w) for w in warned), warned
    assert any(re.search(r"1 of 9 train rows \(longest \d+ tokens\) and 1 of 9 eval rows .* max_length 16 tokens and were truncated", w)
               for w in warned), warned
    assert len(warned) == 3 and not unknown_flags("train", result.stderr), result.stderr
    m = json.loads((tmp_path / "runs" / "run" / "results.json").read_text())["metrics"]
    assert m["warnings"] == warned
    assert m["data"]["train"]["shape"] == "text" and m["data"]["duplicate_train_file_rows"] == 2
    assert m["data"]["train"]["n_truncated"] == 1 and m["data"]["train"]["longest_row_tokens"] > 16


def test_a_hint_names_python_settings_in_python(tmp_path):
    """Outside the CLI the same refusal reads in Python terms, and carries the settings an interface maps to its options."""
    from workbench.datafiles import load_rows
    from workbench.errors import ConfigError

    (tmp_path / "content.jsonl").write_text(FILES["content.jsonl"])
    with pytest.raises(ConfigError) as info:
        load_rows(str(tmp_path / "content.jsonl"))
    assert str(info.value).endswith("map other column names with fields={'prompt_field': ..., 'text_field': ...}")
    assert info.value.settings == ("prompt_field", "completion_field", "messages_field", "text_field") and "--" not in str(info.value)
