"""The quickstart's summary on the terminal, from its ``results.json`` record: one printer for ``python -m
studies.quickstart`` and ``workbench quickstart``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from studies.quickstart.figures import lofit_details


def summary_lines(record: dict[str, Any], run_dir: str | Path | None = None) -> list[str]:
    """Base vs tuned (held-out metrics), the held-out accuracy by the queried box's position and by number of boxes,
    LoFiT's heads, the merge check and the wall time; with ``run_dir``, where the files are."""
    m, run_info = record["metrics"], record["run_info"]
    lines = ["base vs tuned (held-out entity tracking)", f"{'metric':<24} {'base':>8} {'tuned':>8}"]
    lines += [f"{key:<24} {m['base'][key]:>8.3f} {m['tuned'][key]:>8.3f}" for key in ("accuracy", "accuracy_among_objects", "logit_difference")]
    if m.get("accuracy_breakdown"):
        lines += ["", "held-out accuracy (top-1) where the tune works and where it fails", f"{'prompts':<24} {'n':>4} {'base':>8} {'tuned':>8}"]
        for key, label in (("by_query_position", "queried box: {}"), ("by_n_boxes", "{} boxes")):
            for row in m["accuracy_breakdown"][key]:
                acc = ["-" if row[f"{role}_accuracy"] is None else f"{row[f'{role}_accuracy']:.3f}" for role in ("base", "tuned")]
                group = label.format(row.get("query_position", row.get("n_boxes")))
                lines.append(f"{group:<24} {row['n_prompts']:>4} {acc[0]:>8} {acc[1]:>8}")
    lines.append(f"LoFiT heads: {len(lofit_details(m)[0]['heads'])}, trainable parameters: {m['n_trainable_parameters']}, "
                 f"merge max |Δlogit|: {m['merge_max_abs_logit_diff']:.2e}, wall time {run_info['wall_time_s']:.0f} s")
    if run_dir is not None:
        lines.append(f"wrote {Path(run_dir) / 'results.json'} and {Path(run_dir) / 'report.html'}")
    return lines


def print_summary(record: dict[str, Any], out: Callable[[str], Any] = print, run_dir: str | Path | None = None) -> None:
    """Print :func:`summary_lines` with ``out``, one call per line."""
    for line in summary_lines(record, run_dir):
        out(line)
