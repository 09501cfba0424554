"""The app's dataset-level diff page: opens a ``workbench diff`` run folder (its ``results.json`` and the figures
``studies/dataset_diff`` wrote as ``figures/*.json``) and shows them; never imports study code and never runs a model.

The page-building functions take the page object (``streamlit`` or a container) as an argument, so this module
imports no streamlit and its data functions are testable without a running app.
"""

from __future__ import annotations

import html
import os
from typing import Any

from app.views import PageView, ViewContext, register_view
from app.views.runs import RunResult, find_results, run_figures

KIND = "dataset_diff"
OLD_KIND = "model_diff"  # run folders written before the study was renamed (2026-12-06)
BENCHMARK = "diffing_benchmark"


def diff_runs(runs_dir: str | os.PathLike) -> list[RunResult]:
    """Every readable ``workbench diff`` result under ``runs_dir`` (``run_info.config.study == "dataset_diff"``, or the
    study's former name), newest first."""
    return [r for r in find_results(runs_dir) if r.kind in (KIND, OLD_KIND) and not r.error]


def benchmark_runs(runs_dir: str | os.PathLike) -> list[RunResult]:
    """Every readable diffing-benchmark result under ``runs_dir`` (``studies/diffing_benchmark``), newest first."""
    return [r for r in find_results(runs_dir) if r.kind == BENCHMARK and not r.error]


def benchmark_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The benchmark table (readout × method × organism × metric: tuned, control, tuned − control) as rows."""
    keys = ("readout", "method", "organism", "metric", "tuned", "control", "delta")
    return [{k: (round(r[k], 4) if isinstance(r[k], float) else r[k]) for k in keys} for r in record.get("metrics", {}).get("rows", [])]


def summary_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline numbers of a diff run as ``{"metric", "value"}`` rows."""
    m = record.get("metrics", {})
    models = record.get("meta_info", {}).get("models", {})
    kl, nll, adl = m.get("kl", {}), m.get("nll", {}), m.get("adl", {})
    rows = [("base", models.get("base", {}).get("id")), ("tuned", models.get("tuned", {}).get("id")),
            ("rows / tokens", f"{m.get('n_rows')} / {m.get('n_tokens')}"),
            ("mean KL(P_tuned ‖ P_base), nats/token", kl.get("mean_per_token")), ("max KL, nats", kl.get("max")),
            ("base NLL, nats/token", nll.get("base_nats_per_token")), ("tuned NLL, nats/token", nll.get("tuned_nats_per_token")),
            ("ADL layer", adl.get("layer")), ("‖δ_j‖ per position", adl.get("delta_norm_by_position")),
            ("split-half cosine of δ_j", adl.get("split_half_cosine")),
            ("steering α chosen per position (× n̄)", [(p.get("steering") or {}).get("chosen_alpha") for p in adl.get("by_position", [])])]
    return [{"metric": k, "value": round(v, 6) if isinstance(v, float) else ", ".join(map(str, v)) if isinstance(v, list) else v}
            for k, v in rows]


def context_lines(record: dict[str, Any]) -> list[str]:
    """The top-KL positions as HTML lines: KL, row:pos, the context with the read token highlighted, and both
    models' top-1 next token.

    The corpus text is escaped exactly once (``&``, ``<``, ``>``, quotes; newlines shown as ↵), for a page that
    renders HTML as HTML (:func:`render` uses ``html``, not markdown, which would also read ``*``, ``_``, `` ` ``
    and ``$`` in the text as formatting)."""
    out = []
    for t in record.get("metrics", {}).get("kl", {}).get("top", []):
        esc = lambda s: html.escape(str(s)).replace("\n", "↵")
        left, right = "".join(esc(x) for x in t.get("left_text", [])), "".join(esc(x) for x in t.get("right_text", []))
        out.append(f"<code>{t['kl']:.4g}</code> nats · row {t['row']} pos {t['pos']}: {left}"
                   f"<mark><b>{esc(t.get('token_text', ''))}</b></mark>{right} "
                   f"<small>(base → {esc(repr(t.get('base_top1_text', '')))}, tuned → {esc(repr(t.get('tuned_top1_text', '')))})</small>")
    return out


def render(page: Any, runs_dir: str, problem: str | None = None, key: str = "diff") -> int:
    """Draw the page into ``page`` (``streamlit`` or a container): a run picker, the summary, the top-KL contexts
    and every figure of the chosen run. Returns the number of plotly charts drawn."""
    if problem:
        page.warning(problem[:1].upper() + problem[1:] + ".")
        return 0
    runs, benchmarks = diff_runs(runs_dir), benchmark_runs(runs_dir)
    if not runs and not benchmarks:
        page.info(f"No dataset-level diff under {runs_dir!r}. Make one with "
                  f"`workbench diff BASE TUNED --data corpus.jsonl --runs-dir {runs_dir}`, or run the diffing benchmark "
                  f"(`python -m studies.diffing_benchmark --out {runs_dir}/diffing_benchmark`).")
        return 0
    drawn = 0
    if benchmarks:
        drawn += _render_benchmark(page, benchmarks, key)
    if not runs:
        return drawn
    labels = [r.label for r in runs]
    choice = page.selectbox("Diff run", list(range(len(runs))), format_func=lambda i: labels[i], key=f"{key}-run")
    result = runs[choice]
    page.caption(str(result.run_dir))
    page.dataframe(summary_rows(result.record), hide_index=True)
    lines = context_lines(result.record)
    if lines:
        with page.expander("Top-KL positions in context", expanded=True):
            page.html("<div>" + "<br>".join(lines) + "</div>")  # not markdown: the text shows as it is in the corpus
    return drawn + _draw_figures(page, result, f"{key}-{choice}")  # the per-position ADL readouts and steered samples


def _draw_figures(page: Any, result: RunResult, key: str) -> int:
    """Every figure a run folder holds (with its notes); returns how many were drawn."""
    figs, notes = run_figures(result)
    for note in notes:
        page.warning(note)
    for i, fig in enumerate(figs):
        page.plotly_chart(fig, key=f"{key}-{i}", config={"displaylogo": False})
    return len(figs)


def _render_benchmark(page: Any, benchmarks: list[RunResult], key: str) -> int:
    """The chosen benchmark's table and figures (heatmaps of score minus control, the fit of each fine-tune)."""
    labels = [r.label for r in benchmarks]
    choice = page.selectbox("Diffing benchmark", list(range(len(benchmarks))), format_func=lambda i: labels[i], key=f"{key}-bench")
    result = benchmarks[choice]
    page.caption(f"{result.run_dir}: keyword scores of each readout, raw and minus the control fine-tune")
    page.dataframe(benchmark_rows(result.record), hide_index=True)
    return _draw_figures(page, result, f"{key}-bench-{choice}")


def _show(ctx: ViewContext) -> int:
    return render(ctx.page, ctx.runs_dir, ctx.runs_problem)


register_view(PageView("Dataset diff", order=80, needs={"runs_folder"}, render=_show))
