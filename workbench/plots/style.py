"""The one layout helper every figure of the workbench (and of its studies) goes through."""

from __future__ import annotations

import plotly.graph_objects as go

#: Heatmap keywords for signed values (differences, patching effects): red-blue, white at 0.
DIVERGING = dict(colorscale="RdBu", zmid=0)
#: Heatmap keywords for magnitudes (norms, probabilities).
SEQUENTIAL = dict(colorscale="Viridis")


def layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    """Title, height (pixels), margins (room for subplot titles) and the white template; returns ``fig``."""
    fig.update_layout(title=title, height=height, margin=dict(l=70, r=20, t=80, b=50), template="plotly_white")
    return fig
