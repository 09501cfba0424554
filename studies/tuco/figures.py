"""Figures of ``studies/tuco``: TuCo results -> plotly Figures (Nuti, Franzmeyer, Henriques, ICML 2025).

``figures(record)`` draws every figure the study writes from its ``results.json`` record. Conventions of
:mod:`workbench.plots`: layer on the y axis, axis titles with units. No ``.show()``, no streamlit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from workbench.plots import layout


def tuco_by_group(groups: dict[str, Sequence[float]], title: str = "Tuning contribution (TuCo) at the last token") -> go.Figure:
    """One box per named group of per-prompt TuCo values (every prompt drawn as a point, mean marked)."""
    fig = go.Figure()
    for name, values in groups.items():
        fig.add_box(y=list(values), name=name, boxpoints="all", jitter=0.4, pointpos=0, boxmean=True)
    fig.update_yaxes(title="TuCo = ‖ΣFTC‖ / (‖ΣPTC‖ + ‖ΣFTC‖) (fraction)", rangemode="tozero")
    fig.update_layout(showlegend=False)
    return layout(fig, title)


def alpha_sweep(alphas: Sequence[float], series: dict[str, Sequence[float]],
                title: str = "Held-out entity tracking vs the scale α of the fine-tuning component",
                yaxis: str = "accuracy (fraction of prompts)") -> go.Figure:
    """Lines of metrics against α; dashed guides at α = 0 (base model) and α = 1 (tuned model)."""
    fig = go.Figure()
    for name, values in series.items():
        fig.add_scatter(x=list(alphas), y=list(values), mode="lines+markers", name=name)
    for x, label in ((0.0, "base (α=0)"), (1.0, "tuned (α=1)")):
        fig.add_vline(x=x, line_dash="dash", line_color="grey", annotation_text=label, annotation_position="top")
    fig.update_xaxes(title="α (scale of FTC; 0 = base, 1 = tuned)")
    fig.update_yaxes(title=yaxis, range=[0, 1.05] if "accuracy" in yaxis else None)
    return layout(fig, title)


def component_norms(labels: Sequence[str], series: dict[str, Sequence[float]],
                    title: str = "Mean norm of each component's contribution at the last token") -> go.Figure:
    """Per-component norms (embedding, then decoder layers) with the component on the y axis, one marker
    series per name (e.g. ‖FTC_l‖ on in-task vs unrelated prompts); log x axis (residual-stream units).
    Series whose name contains "PTC" are joined by dotted lines; exact zeros (a component the fine-tuning
    did not touch has FTC = 0) are left out, as a log axis cannot show them."""
    fig = go.Figure()
    symbols = ("circle", "diamond", "square", "triangle-up")
    for i, (name, values) in enumerate(series.items()):
        ptc = "PTC" in name
        fig.add_scatter(x=[v if v > 0 else None for v in values], y=list(labels), name=name,
                        mode="lines+markers" if ptc else "markers", connectgaps=False,
                        line=dict(dash="dot", width=1), marker=dict(size=6 if ptc else 10, symbol=symbols[i % len(symbols)]))
    fig.update_xaxes(title="mean ‖component‖₂ at the last token (residual-stream units, log scale; zeros not shown)", type="log")
    fig.update_yaxes(title="component (embedding, then layer)", autorange="reversed", dtick=1)
    fig.update_layout(legend=dict(orientation="h", y=-0.08))
    return layout(fig, title, height=160 + 18 * len(labels))


def figures(record: dict[str, Any]) -> dict[str, Any]:
    """The study's plotly Figures from a results record: name -> Figure."""
    m = record["metrics"]
    t, pc, sw = m["tuco"], m["per_component"], m["alpha_sweep"]
    mw = t["mann_whitney"]
    return {
        "tuco_by_group": tuco_by_group(
            {"in-task (held-out entity tracking)": t["in_task"]["values"], "unrelated (general text)": t["unrelated"]["values"]},
            title=f"TuCo at the last token (Mann-Whitney U = {mw['u']:.0f}, two-sided p = {mw['p_two_sided']:.2g})"),
        "alpha_sweep": alpha_sweep(sw["alphas"], {k: sw[k] for k in ("accuracy", "accuracy_among_objects")}),
        "component_norms": component_norms(
            pc["labels"], {"‖FTC‖ in-task": pc["in_task_mean_ftc_norm"], "‖FTC‖ unrelated": pc["unrelated_mean_ftc_norm"],
                           "‖PTC‖ in-task": pc["in_task_mean_ptc_norm"], "‖PTC‖ unrelated": pc["unrelated_mean_ptc_norm"]}),
    }
