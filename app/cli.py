"""``workbench`` command line (typer).

Every command runs inside one error boundary (:class:`_Typer` wraps each command it registers): an
expected error — a :class:`~workbench.errors.WorkbenchError`, a JSON file that does not parse, an
``OSError`` on a path the user gave — becomes one line ``error: <message>`` and exit code 2, without a
traceback. Anything else is a bug and raises with its traceback.

A command's result (summary lines, tables, listings, the fetched path) goes to stdout; progress lines and errors go
to stderr (:data:`log`, :func:`workbench.runs.log_progress`), as do third-party progress bars: scripts and tests read
stdout alone (``tests/test_commands.py``).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.models import OptionInfo

from workbench.errors import WorkbenchError

#: What a command reports as ``error: ...`` (exit code 2) instead of a traceback.
EXPECTED_ERRORS = (WorkbenchError, json.JSONDecodeError, OSError)
console = Console(soft_wrap=True)  # results, on stdout; paths are never broken across lines (tables still fit the terminal)
log = Console(stderr=True, soft_wrap=True)  # progress lines and errors, on stderr


def _options(fn: Callable[..., Any]) -> dict[str, str]:
    """A command's options: parameter name → its ``--flag`` (the declared one, else typer's ``--the-name``)."""
    out = {}
    for name, param in inspect.signature(fn).parameters.items():
        if isinstance(param.default, OptionInfo):
            declared = [d for d in param.default.param_decls or () if d.startswith("--")]
            out[name] = declared[0].split("/")[0] if declared else "--" + name.replace("_", "-")
    return out


def _in_command_terms(exc: BaseException, options: dict[str, str]) -> str:
    """The message with its advice naming the command's own ``options`` for the settings it means
    (:class:`~workbench.errors.WorkbenchError` ``settings``), or without the advice where the command has none of them."""
    settings = getattr(exc, "settings", ())
    if not settings:
        return str(exc)
    flags = [options[s] for s in settings if s in options]
    return f"{exc.reason}; {exc.hint} {'/'.join(flags)}" if flags else exc.reason


def _fail(exc: BaseException, options: dict[str, str] | None = None) -> None:
    """Print ``error: <message>`` on one line (no wrapping, no markup read from the message), its advice in terms
    of the command's ``options`` (:func:`_in_command_terms`); exit code 2."""
    text = " ".join(_in_command_terms(exc, options or {}).split()) or type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, WorkbenchError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    log.print(f"[bold red]error:[/] {escape(text)}", soft_wrap=True)
    raise typer.Exit(code=2)


def _error_boundary(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with :data:`EXPECTED_ERRORS` turned into ``error: ...`` and exit code 2 (typer reads the
    signature through ``functools.wraps``)."""
    options = _options(fn)

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EXPECTED_ERRORS as exc:
            _fail(exc, options)

    return command


class _Typer(typer.Typer):
    """A Typer whose every command runs inside :func:`_error_boundary`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().command(*args, **kwargs)
        return lambda fn: register(_error_boundary(fn))


app = _Typer(help="ft-workbench: what did fine-tuning change inside the model, and where?", no_args_is_help=True, add_completion=False)


@app.command()
def quickstart(
    model: str = typer.Option("smollm2-135m-instruct", help="registry name, Hugging Face id or local directory"),
    runs_dir: Path = typer.Option(Path("runs"), help="parent folder of the run folder"),
    name: Optional[str] = typer.Option(None, help="run folder name (default: quickstart-<time>); an existing one resumes"),
    config: Optional[Path] = typer.Option(None, help="JSON file with QuickstartConfig fields"),
) -> None:
    """The main job: LoFiT on entity tracking (the train job), then a base-vs-tuned comparison report
    (``python -m studies.quickstart --out <runs-dir>/<name>`` runs the same study)."""
    from studies.quickstart import QuickstartConfig, print_summary, run_quickstart
    from workbench.artifacts import read_json
    from workbench.config import config_from_dict, read_json_object

    fields = read_json_object(config) if config else {}
    fields.setdefault("model", model)
    cfg = config_from_dict(QuickstartConfig, fields)
    run_dir = run_quickstart(cfg, runs_dir, name, log=log.print)
    print_summary(read_json(run_dir / "results.json"), out=lambda line: console.print(line, markup=False, highlight=False), run_dir=run_dir)


@app.command()
def train(
    method: str = typer.Argument(..., help="a registered method (see `workbench methods`)"),
    task: Optional[str] = typer.Option(None, help="a registered task (see `workbench tasks`; default: the config's, else entity_tracking)"),
    data: Optional[str] = typer.Option(None, help="train on your data instead of a task: a .jsonl/.json/.csv/.parquet file "
                                                  "(prompt/completion, messages or text rows) or a hub dataset id"),
    eval_data: Optional[str] = typer.Option(None, help="held-out data file (default: hold out --eval-fraction of --data)"),
    prompt_field: Optional[str] = typer.Option(None, help="column holding the prompt (default 'prompt')"),
    completion_field: Optional[str] = typer.Option(None, help="column holding the completion (default 'completion')"),
    messages_field: Optional[str] = typer.Option(None, help="column holding the chat messages (default 'messages')"),
    text_field: Optional[str] = typer.Option(None, help="column holding plain text (default 'text')"),
    shape: Optional[str] = typer.Option(None, help="force the data shape: prompt_completion, messages or text (default: from the columns)"),
    max_length: Optional[int] = typer.Option(None, help="most tokens per example, prompt + answer (default 512)"),
    overflow: Optional[str] = typer.Option(None, help="a longer example: 'truncate' (prompt keeps its tail) or 'refuse' (default truncate)"),
    eval_fraction: Optional[float] = typer.Option(None, help="share of --data held out without --eval-data (default 0.1)"),
    split_seed: Optional[int] = typer.Option(None, help="seed of the held-out split (default 0)"),
    config: Optional[Path] = typer.Option(None, help="JSON with TrainJobConfig fields: model, method_config, train, task, task_config, "
                                                     "data, eval_data, data_fields, max_length, overflow, export ..."),
    runs_dir: Path = typer.Option(Path("runs"), help="parent folder of the run folder"),
    name: Optional[str] = typer.Option(None, help="run folder name (an existing one resumes training)"),
    export: bool = typer.Option(False, help="also save the merged model as a plain Hugging Face model"),
    processes: int = typer.Option(1, min=1, help="data-parallel processes (accelerate; gloo on CPU, NCCL on GPU); the "
                                                  "global batch stays train.batch_size_prompts"),
) -> None:
    """Fine-tune one method on a task or on your data file, and save adapter, results (and optionally the merged model)."""
    from workbench.config import config_from_dict, read_json_object
    from workbench.errors import ConfigError
    from workbench.distributed import is_main_process
    from workbench.train_job import TrainJobConfig, run_train_job

    if task is not None and data is not None:
        raise ConfigError(f"--task {task!r} and --data {data!r} together: train on a registered task or on your data file, not both")
    fields = read_json_object(config) if config else {}
    fields["method"] = method
    if task is not None:
        fields["task"] = task
    mapping = {k: v for k, v in {"prompt_field": prompt_field, "completion_field": completion_field, "messages_field": messages_field,
                                 "text_field": text_field}.items() if v is not None}
    if mapping and isinstance(fields.get("data_fields", {}), dict):  # a non-dict is refused by config_from_dict below
        fields["data_fields"] = {**fields.get("data_fields", {}), **mapping}
    for key, value in {"data": data, "eval_data": eval_data, "data_shape": shape, "max_length": max_length, "overflow": overflow,
                       "eval_fraction": eval_fraction, "split_seed": split_seed}.items():
        if value is not None:
            fields[key] = value
    fields["export"] = export or fields.get("export", False)
    cfg = config_from_dict(TrainJobConfig, fields)
    if processes > 1 and "WORLD_SIZE" not in os.environ:  # the launcher: start the processes, each runs this command
        from app.launch_train import launch_processes

        run_dir = launch_processes(processes, cfg, runs_dir, name, log.print)
    else:
        from app.launch_train import LAUNCHED_ENV

        run_dir = run_train_job(cfg, runs_dir, name, log=log.print)
        if not is_main_process() or os.environ.get(LAUNCHED_ENV):  # under --processes N the launcher prints the summary
            return
    m = json.loads((run_dir / "results.json").read_text())["metrics"]
    tail = f"{m['n_trainable_parameters']} trainable parameters, {m['seconds_per_step']:.2f} s/step; wrote {run_dir}"
    if cfg.data is None:
        console.print(f"{method} on {cfg.task}: held-out accuracy {m['base_accuracy']:.3f} → {m['tuned_accuracy']:.3f}, {tail}")
        return
    b, t = m["base"], m["tuned"]
    em = (f", exact match {b['exact_match_answer']:.3f} → {t['exact_match_answer']:.3f} (answer + EOS {b['exact_match_answer_eos']:.3f} → "
          f"{t['exact_match_answer_eos']:.3f})") if b.get("exact_match_answer") is not None else ""
    console.print(f"{method} on {cfg.data}: held-out answer loss {b['answer_loss']:.3f} → {t['answer_loss']:.3f} nats/token, "
                  f"perplexity {b['perplexity']:.2f} → {t['perplexity']:.2f}{em}, {tail}")


@app.command()
def fetch(model: str = typer.Argument("smollm2-135m-instruct", help="registry name")) -> None:
    """Convert a built-in model's GGUF to the safetensors cache (once) and verify it."""
    from workbench.models import ensure_model

    path = ensure_model(model)
    console.print(f"{model}: {path}")


@app.command()
def models() -> None:
    """List the built-in models."""
    from workbench.models import REGISTRY

    for name, entry in sorted(REGISTRY.items()):
        console.print(f"{name}\t{entry.description}")


@app.command()
def methods() -> None:
    """List the registered fine-tuning methods."""
    from workbench.methods import available_methods

    for name in available_methods():
        console.print(name)


@app.command()
def tasks() -> None:
    """List the registered tasks (train on one with `workbench train <method> --task <name>`)."""
    from workbench.tasks import available_tasks, get_task

    for name in available_tasks():
        console.print(f"{name}\t{get_task(name).description}", soft_wrap=True)


@app.command("app")
def app_command(
    base: str = typer.Option("smollm2-135m-instruct", help="base model: registry name, model directory or Hugging Face id"),
    tuned: Optional[str] = typer.Option(None, help="tuned model: run folder, adapter folder, model directory or Hugging Face id "
                                                   "(default: the newest run folder under --runs-dir)"),
    runs_dir: Path = typer.Option(Path("runs"), help="where the app looks for run folders and results.json files"),
    port: int = typer.Option(8501, help="HTTP port of the app"),
    headless: Optional[bool] = typer.Option(None, "--headless/--browser", show_default=False,
                                            help="--headless: serve only and print the URL; --browser: also open a browser "
                                                 "window. Default: a browser only where there is a display (not over SSH, "
                                                 "in a container or a service)"),
) -> None:
    """Open the app: base and tuned side by side on your prompts (Streamlit, http://localhost:<port>; the URL is printed
    once the page is served). Never asks anything, so it also runs without a terminal; on a remote machine forward the
    port: ssh -N -L 8501:localhost:8501 <host>, then open http://localhost:8501 on your own."""
    from app.launch import main as launch
    from workbench.errors import ConfigError

    if runs_dir.exists() and not runs_dir.is_dir():  # the app only reads it: a missing folder just means no runs yet
        raise ConfigError(f"--runs-dir {str(runs_dir)!r} is a regular file, not a folder; pass the folder that holds your run folders")
    raise typer.Exit(code=launch(base, tuned, port, headless, str(runs_dir)))


@app.command("diff")
def diff_command(
    base: str = typer.Argument(..., help="base model: registry name, model directory or Hugging Face id"),
    tuned: str = typer.Argument(..., help="tuned model: run folder, adapter folder, peft adapter, model directory or Hugging Face id"),
    data: Path = typer.Option(..., help="corpus file (.jsonl/.json/.csv/.parquet rows of text, prompt+completion or messages)"),
    config: Optional[Path] = typer.Option(None, help="JSON with ModelDiffConfig fields (the options below override it)"),
    runs_dir: Path = typer.Option(Path("runs"), help="parent folder of the run folder (the app lists runs from there)"),
    name: Optional[str] = typer.Option(None, help="run folder name inside --runs-dir (default: diff-<time>)"),
    out: Optional[Path] = typer.Option(None, help="the run folder itself, inside --runs-dir (instead of --name)"),
    batch_size: Optional[int] = typer.Option(None, help="rows per forward pass (default 8)"),
    max_rows: Optional[int] = typer.Option(None, help="rows read from the corpus (default 2000)"),
    max_length: Optional[int] = typer.Option(None, help="tokens kept per row (default 128)"),
    layer: Optional[int] = typer.Option(None, help="Activation Difference Lens layer (default: int(0.5 * (n_layers - 1)))"),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: the first available)"),
    prompt_field: Optional[str] = typer.Option(None, help="column holding the prompt (default 'prompt')"),
    completion_field: Optional[str] = typer.Option(None, help="column holding the completion (default 'completion')"),
    messages_field: Optional[str] = typer.Option(None, help="column holding the chat messages (default 'messages')"),
    text_field: Optional[str] = typer.Option(None, help="column holding plain text (default 'text')"),
) -> None:
    """Dataset-level diff of BASE and TUNED over a corpus: KL, diff mining, layer/head differences, logit lens, ADL."""
    from studies.dataset_diff import ModelDiffConfig, plan_and_run
    from workbench.config import config_from_dict, read_json_object

    fields = read_json_object(config) if config else {}
    fields.update({"base": base, "tuned": tuned, "data": str(data), "texts": []})
    mapping = {k: v for k, v in {"prompt_field": prompt_field, "completion_field": completion_field, "messages_field": messages_field,
                                 "text_field": text_field}.items() if v is not None}
    if mapping and isinstance(fields.get("fields") or {}, dict):  # a non-dict is refused by config_from_dict below
        fields["fields"] = {**(fields.get("fields") or {}), **mapping}
    for key, value in (("batch_size", batch_size), ("max_rows", max_rows), ("max_length", max_length), ("layer", layer), ("device", device)):
        if value is not None:
            fields[key] = value
    cfg = config_from_dict(ModelDiffConfig, fields)
    run_dir = plan_and_run(cfg, runs_dir, name, out, log=log.print)
    m = json.loads((run_dir / "results.json").read_text())["metrics"]
    console.print(f"mean KL(tuned ‖ base) {m['kl']['mean_per_token']:.4g} nats/token over {m['n_tokens']} tokens; "
                  f"ADL steering α per position {[p['steering']['chosen_alpha'] if p['steering'] else None for p in m['adl']['by_position']]}; wrote {run_dir / 'results.json'} and {run_dir / 'report.html'}")


if __name__ == "__main__":
    app()
