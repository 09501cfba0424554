"""Results found in run folders, for the app (no streamlit): a metrics table for every ``results.json``
and the figures its producer wrote beside it.

Every study (the quickstart included) writes each of its figures as plotly JSON, ``<run>/figures/<name>.json``
(:func:`studies.common.write_figure_files`); the app reads those files with :func:`plotly.io.from_json`, in
sorted order, and never imports study code: the record is data, the study's own figure functions drew the
figures when it ran. A run without figure files gets its metrics table only (and a note saying so).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from app.views import PageView, ViewContext, register_view

_MAX_DEPTH = 4


@dataclass
class RunResult:
    """One ``results.json``: where it is, who wrote it, the record, and any problem reading it."""

    path: Path
    kind: str
    record: dict = field(default_factory=dict)
    error: str = ""

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    @property
    def label(self) -> str:
        finished = self.record.get("run_info", {}).get("finished", "")[:19].replace("T", " ")
        return f"{self.run_dir.name} ({self.kind}{', ' + finished if finished else ''})"


def _kind(record: dict) -> str:
    run_info = record.get("run_info", {})
    config = run_info.get("config")
    for holder in (config, run_info):
        if isinstance(holder, dict) and isinstance(holder.get("study"), str):
            return holder["study"]
    if isinstance(config, dict):
        metrics = record.get("metrics", {})
        if "n_boxes" in config and "diff" in metrics and "selected_heads" in metrics:  # written before runs named their study
            return "quickstart"
    return "results"


def find_results(runs_dir: str | os.PathLike, max_depth: int = _MAX_DEPTH) -> list[RunResult]:
    """Every ``results.json`` under ``runs_dir`` (at most ``max_depth`` folders deep), newest first. A file
    that cannot be read is listed with ``error`` set instead of raising."""
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        if depth >= max_depth:
            dirnames.clear()
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "checkpoints")
        if "results.json" in filenames:
            path = Path(dirpath) / "results.json"
            try:
                record = json.loads(path.read_text())
                if not isinstance(record, dict):
                    raise ValueError("the top level is not a JSON object")
                found.append(RunResult(path, _kind(record), record))
            except (OSError, ValueError) as exc:
                found.append(RunResult(path, "unreadable", error=f"{type(exc).__name__}: {exc}"))
    return sorted(found, key=lambda r: r.path.stat().st_mtime, reverse=True)


def flatten_metrics(metrics: Any, prefix: str = "") -> list[dict]:
    """Scalar entries (numbers, strings, booleans) of a nested metrics dict as ``{"metric", "value"}`` rows
    with dotted keys; lists and tensors are left to the figures."""
    rows = []
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            rows += flatten_metrics(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(metrics, (int, float, str, bool)) or metrics is None:
        rows.append({"metric": prefix, "value": metrics if not isinstance(metrics, float) else round(metrics, 6)})
    return rows


#: What an old data-job record shows instead of the answer-only exact match it did not measure.
NOT_RECORDED = "not recorded (run made before exact_match_answer existed; rerun the job)"


def upgrade_metrics(metrics: Any) -> Any:
    """``metrics`` with the exact-match keys of runs made before the split into two numbers renamed for display.

    Such runs wrote one ``exact_match`` (the answer tokens *and* the EOS after them); today's write
    ``exact_match_answer`` and ``exact_match_answer_eos`` (:mod:`workbench.datafiles.evaluate`). In every nested dict
    that has ``exact_match`` but neither new key, the value moves to ``exact_match_answer_eos`` and
    ``exact_match_answer`` becomes :data:`NOT_RECORDED` (``None`` stays ``None``: plain-text data has no exact match).
    Anything else is returned as it is; the input is not changed."""
    if isinstance(metrics, list):
        return [upgrade_metrics(v) for v in metrics]
    if not isinstance(metrics, dict):
        return metrics
    out = {k: upgrade_metrics(v) for k, v in metrics.items()}
    if "exact_match" in out and "exact_match_answer" not in out and "exact_match_answer_eos" not in out:
        old = out.pop("exact_match")
        out["exact_match_answer"] = None if old is None else NOT_RECORDED
        out["exact_match_answer_eos"] = old
    return out


def metric_tables(metrics: Any, prefix: str = "") -> dict[str, list[dict]]:
    """Lists of records inside the metrics (e.g. a study's comparison table), by dotted key, with nested
    values flattened to scalars per row."""
    out: dict[str, list[dict]] = {}
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            out.update(metric_tables(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(metrics, list) and metrics and all(isinstance(row, dict) for row in metrics):
        out[prefix] = [{r["metric"]: r["value"] for r in flatten_metrics(row)} for row in metrics]
    return out


def run_figures(result: RunResult) -> tuple[list[go.Figure], list[str]]:
    """``(figures, notes)`` for one result: the plotly JSON files under ``<run>/figures/``, sorted by name;
    ``notes`` say when there are none or a file could not be read."""
    fig_dir = result.run_dir / "figures"
    paths = sorted(fig_dir.glob("*.json")) if fig_dir.is_dir() else []
    if not paths:
        return [], [f"this run wrote no figure files ({fig_dir.name}/*.json); showing its metrics only. "
                    "Runs made before figures were saved as JSON need to be run again to get them."]
    figs, notes = [], []
    for path in paths:
        try:
            figs.append(pio.from_json(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            notes.append(f"{fig_dir.name}/{path.name} could not be read as a plotly figure ({type(exc).__name__}: {exc})")
    return figs, notes


def _show(ctx: ViewContext) -> int:
    """The *Run results* view (drawn by :func:`app.render.runs_tab`): every ``results.json`` under the runs folder."""
    from app import render

    return render.runs_tab(ctx.runs_dir, ctx.runs_problem)


register_view(PageView("Run results", order=70, needs={"runs_folder"}, render=_show))
