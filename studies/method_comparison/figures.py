"""Figures of ``studies/method_comparison``: accuracy per variant and accuracy against trainable parameters.

``figures(record)`` draws every figure the study writes from its ``results.json`` record. No ``.show()``, no
streamlit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from workbench.plots import layout


def accuracy_by_variant(rows: Sequence[dict[str, Any]], title: str) -> go.Figure:
    """Grouped bars of held-out (and OOD, when present) accuracy per variant, error bars = std over seeds."""
    fig = go.Figure()
    names = [r["variant"] for r in rows]
    for key, label in (("id_accuracy", "held-out (in-distribution)"), ("ood_accuracy", "out-of-distribution")):
        if any(key in r for r in rows):
            fig.add_bar(name=label, x=names, y=[r.get(key) for r in rows], error_y=dict(type="data", array=[r.get(f"{key}_std", 0) for r in rows]))
    fig.update_xaxes(title="variant")
    fig.update_yaxes(title="accuracy (fraction of prompts)", range=[0, 1.05])
    return layout(fig.update_layout(barmode="group"), title)


def accuracy_vs_params(rows: Sequence[dict[str, Any]], title: str) -> go.Figure:
    """Held-out accuracy against trainable parameters (log x), one marker per variant."""
    fig = go.Figure(go.Scatter(x=[r["n_trainable"] for r in rows], y=[r["id_accuracy"] for r in rows], text=[r["variant"] for r in rows],
                               mode="markers+text", textposition="top center", error_y=dict(type="data", array=[r.get("id_accuracy_std", 0) for r in rows])))
    fig.update_xaxes(title="trainable parameters (count, log scale)", type="log")
    fig.update_yaxes(title="held-out accuracy (fraction of prompts)")
    return layout(fig, title)


def figures(record: dict[str, Any]) -> dict[str, go.Figure]:
    """Per task of the summary table (``metrics.table``): ``{task}_accuracy`` (accuracy by variant with seed
    std) and ``{task}_params`` (accuracy vs trainable parameters)."""
    rows = record["metrics"]["table"]
    figs = {}
    for task in sorted({r["task"] for r in rows}):
        sub = [r for r in rows if r["task"] == task]
        figs[f"{task}_accuracy"] = accuracy_by_variant(sub, title=f"{task}: accuracy by method (mean ± std over seeds)")
        figs[f"{task}_params"] = accuracy_vs_params([r for r in sub if r.get("n_trainable")], title=f"{task}: accuracy vs trainable parameters")
    return figs
