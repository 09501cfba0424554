"""``python -m studies.quickstart [--config default|tiny|PATH.json] [--runs-dir runs] [--name NAME]`` (also
``workbench quickstart`` and ``make demo``): LoFiT on entity tracking and a base-vs-tuned report."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from studies.quickstart.study import QuickstartConfig, run_quickstart
from workbench.errors import WorkbenchError


def summary(run_dir: Path, out: Callable[[str], None] = print) -> None:
    """Print the base-vs-tuned table of a finished run from its ``results.json``."""
    m = json.loads((Path(run_dir) / "results.json").read_text())
    metrics, run_info = m["metrics"], m["run_info"]
    out("base vs tuned (held-out entity tracking)")
    out(f"{'metric':<24} {'base':>8} {'tuned':>8}")
    for key in ("accuracy", "accuracy_among_objects", "logit_difference"):
        out(f"{key:<24} {metrics['base'][key]:>8.3f} {metrics['tuned'][key]:>8.3f}")
    out(f"LoFiT heads: {len(metrics['selected_heads'])}, trainable parameters: {metrics['n_trainable_parameters']}, "
        f"merge max |Δlogit|: {metrics['merge_max_abs_logit_diff']:.2e}, wall time {run_info['wall_time_s']:.0f} s")
    out(f"wrote {Path(run_dir) / 'results.json'} and {Path(run_dir) / 'report.html'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.quickstart", description=__doc__)
    parser.add_argument("--config", default="default", help="tiny, default, or a path to a JSON config")
    parser.add_argument("--runs-dir", default="runs", help="parent folder of the run folder")
    parser.add_argument("--name", default=None, help="run folder name (default quickstart-<time>); an existing one resumes")
    args = parser.parse_args(argv)
    try:
        run_dir = run_quickstart(QuickstartConfig.load(args.config), args.runs_dir, args.name)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary(run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
