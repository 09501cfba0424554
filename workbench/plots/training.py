"""Training and evaluation curves, accuracy bars."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from workbench.plots.style import layout


def accuracy_bars(metrics: dict[str, dict[str, float]], title: str = "Held-out accuracy") -> go.Figure:
    """Grouped bars: ``{"base": {"accuracy": .., "accuracy_among_objects": ..}, "tuned": {...}}``."""
    fig = go.Figure()
    for role, values in metrics.items():
        fig.add_bar(name=role, x=list(values), y=list(values.values()), text=[f"{v:.2f}" for v in values.values()], textposition="outside")
    fig.update_yaxes(title="accuracy (fraction of prompts)", range=[0, 1.1])
    return layout(fig.update_layout(barmode="group"), title)


def training_curves(curves: dict[str, Sequence[float]], title: str = "Training loss") -> go.Figure:
    """One line per named loss curve (nats per answer token) against the step."""
    fig = go.Figure()
    for name, losses in curves.items():
        fig.add_scatter(x=list(range(1, len(losses) + 1)), y=list(losses), mode="lines", name=name)
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="answer loss (nats)")
    return layout(fig, title)


def eval_curve(evals: Sequence[dict], keys: Sequence[str], title: str = "Held-out metrics during training") -> go.Figure:
    """Evaluation records ``[{"step": s, key: value, ...}]`` as lines."""
    fig = go.Figure()
    for key in keys:
        fig.add_scatter(x=[e["step"] for e in evals], y=[e[key] for e in evals], mode="lines+markers", name=key)
    fig.update_xaxes(title="step")
    return layout(fig, title)
