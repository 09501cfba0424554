"""``workbench`` command line (typer).

Every command runs inside one error boundary (:class:`_Typer` wraps each command it registers): an
expected error — a :class:`~workbench.errors.WorkbenchError`, a JSON file that does not parse, an
``OSError`` on a path the user gave — becomes one line ``error: <message>`` and exit code 2, without a
traceback. Anything else is a bug and raises with its traceback.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from workbench.errors import WorkbenchError

#: What a command reports as ``error: ...`` (exit code 2) instead of a traceback.
EXPECTED_ERRORS = (WorkbenchError, json.JSONDecodeError, OSError)
console = Console(soft_wrap=True)  # log lines and paths are never broken across lines (tables still fit the terminal)


def _fail(exc: BaseException) -> None:
    """Print ``error: <message>`` on one line (no wrapping, no markup read from the message); exit code 2."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, WorkbenchError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    console.print(f"[bold red]error:[/] {escape(text)}", soft_wrap=True)
    raise typer.Exit(code=2)


def _error_boundary(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with :data:`EXPECTED_ERRORS` turned into ``error: ...`` and exit code 2 (typer reads the
    signature through ``functools.wraps``)."""

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EXPECTED_ERRORS as exc:
            _fail(exc)

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
    """The main job: LoFiT on entity tracking, then a base-vs-tuned comparison report."""
    from studies.quickstart import QuickstartConfig, run_quickstart

    from workbench.config import config_from_dict, read_json_object

    fields = read_json_object(config) if config else {}
    fields.setdefault("model", model)
    cfg = config_from_dict(QuickstartConfig, fields)
    run_dir = run_quickstart(cfg, runs_dir, name, log=console.print)
    m = json.loads((run_dir / "results.json").read_text())
    metrics, run_info = m["metrics"], m["run_info"]
    table = Table(title="base vs tuned (held-out entity tracking)")
    for col in ("metric", "base", "tuned"):
        table.add_column(col)
    for key in ("accuracy", "accuracy_among_objects", "logit_difference"):
        table.add_row(key, f"{metrics['base'][key]:.3f}", f"{metrics['tuned'][key]:.3f}")
    console.print(table)
    console.print(f"LoFiT heads: {len(metrics['selected_heads'])}, trainable parameters: {metrics['n_trainable_parameters']}, "
                  f"merge max |Δlogit|: {metrics['merge_max_abs_logit_diff']:.2e}, wall time {run_info['wall_time_s']:.0f} s")
    console.print(f"wrote {run_dir / 'results.json'} and {run_dir / 'report.html'}")


@app.command()
def train(
    method: str = typer.Argument(..., help="a registered method (see `workbench methods`)"),
    task: Optional[str] = typer.Option(None, help="a registered task (see `workbench tasks`; default: the config's, else entity_tracking)"),
    config: Optional[Path] = typer.Option(None, help="JSON with TrainJobConfig fields: model, method_config, train, task, task_config, export"),
    runs_dir: Path = typer.Option(Path("runs"), help="parent folder of the run folder"),
    name: Optional[str] = typer.Option(None, help="run folder name (an existing one resumes training)"),
    export: bool = typer.Option(False, help="also save the merged model as a plain Hugging Face model"),
) -> None:
    """Fine-tune one method on one task and save adapter, results (and optionally the merged model)."""
    from workbench.config import config_from_dict, read_json_object
    from workbench.train_job import TrainJobConfig, run_train_job

    fields = read_json_object(config) if config else {}
    fields["method"] = method
    if task is not None:
        fields["task"] = task
    fields["export"] = export or fields.get("export", False)
    run_dir = run_train_job(config_from_dict(TrainJobConfig, fields), runs_dir, name, log=console.print)
    m = json.loads((run_dir / "results.json").read_text())["metrics"]
    console.print(f"{method} on {fields.get('task', 'entity_tracking')}: held-out accuracy {m['base_accuracy']:.3f} → {m['tuned_accuracy']:.3f}, "
                  f"{m['n_trainable_parameters']} trainable parameters, {m['seconds_per_step']:.2f} s/step; wrote {run_dir}")


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
    headless: bool = typer.Option(False, help="do not open a browser window"),
) -> None:
    """Open the app: base and tuned side by side on your prompts (Streamlit, http://localhost:<port>)."""
    from app.launch import main as launch
    from workbench.errors import ConfigError

    if runs_dir.exists() and not runs_dir.is_dir():  # the app only reads it: a missing folder just means no runs yet
        raise ConfigError(f"--runs-dir {str(runs_dir)!r} is a regular file, not a folder; pass the folder that holds your run folders")
    raise typer.Exit(code=launch(base, tuned, port, headless, str(runs_dir)))


if __name__ == "__main__":
    app()
