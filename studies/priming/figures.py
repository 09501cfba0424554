"""Figures of ``studies/priming``: knowledge-priming results -> plotly Figures (Sun et al., arXiv 2504.09522, 2025).

``figures(record)`` draws every figure the study writes from its ``results.json`` record. No ``.show()``, no
streamlit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from workbench.plots import layout


def prior_vs_priming(rows: Sequence[dict[str, Any]], rho: float, p: float, title: str | None = None) -> go.Figure:
    """Scatter of log10 P(keyword) before learning (in the text's own context) against log10 priming, one
    point per learned text, coloured by theme; the Spearman correlation in the title."""
    fig = go.Figure()
    for theme in sorted({r["theme"] for r in rows}):
        sub = [r for r in rows if r["theme"] == theme]
        fig.add_scatter(x=[r["log10_p_before"] for r in sub], y=[r["log10_priming"] for r in sub], mode="markers", name=theme,
                        text=[f"{r['keyword']} ({r['style']})" for r in sub], hovertemplate="%{text}<br>x=%{x:.2f}, y=%{y:.2f}<extra></extra>")
    fig.add_vline(x=-3, line_dash="dash", line_color="grey", annotation_text="P = 1e-3", annotation_position="top")
    fig.add_hline(y=0, line_color="lightgrey")
    fig.update_xaxes(title="log10 P(keyword | its text) before learning")
    fig.update_yaxes(title="log10 priming (mean P_after / P_before on probe prefixes)")
    return layout(fig, title or f"Surprise before learning predicts priming (Spearman ρ = {rho:.2f}, p = {p:.2g})")


def remedies(arms: dict[str, dict[str, float]], title: str = "Priming and memorization with and without each remedy") -> go.Figure:
    """Two grouped bars per arm: mean log10 priming (left axis) and mean memorization P(keyword | own
    context) after learning (right axis, 0–1)."""
    names = list(arms)
    fig = go.Figure()
    fig.add_bar(x=names, y=[arms[a]["mean_log10_priming"] for a in names], name="mean log10 priming", offsetgroup=0,
                error_y=dict(type="data", array=[arms[a]["sem_log10_priming"] for a in names]))
    fig.add_bar(x=names, y=[arms[a]["mean_memorization"] for a in names], name="mean memorization P", yaxis="y2", offsetgroup=1)
    fig.update_layout(yaxis=dict(title="log10 priming (mean ± s.e.m.)"),
                      yaxis2=dict(title="memorization: P(keyword | own context)", overlaying="y", side="right", range=[0, 1.05]),
                      barmode="group", legend=dict(orientation="h", y=-0.15))
    return layout(fig, title)


def figures(record: dict[str, Any]) -> dict[str, Any]:
    """The study's plotly Figures from a results record: name -> Figure."""
    m = record["metrics"]
    std = [r for r in m["rows"] if r["arm"] == "standard"]
    sp = m["spearman_prior_vs_priming"]
    return {"prior_vs_priming": prior_vs_priming(std, sp["rho"], sp["p"]),
            "remedies": remedies(m["arms"])}
