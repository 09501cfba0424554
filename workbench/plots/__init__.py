"""Results -> plotly Figures, shared by studies, reports and the app. No ``.show()``, no streamlit.

Conventions (one layout helper, :func:`layout`): layer on the y axis, heads / positions on the x axis, a
diverging colour scale centred at 0 for differences (:data:`DIVERGING`), axis titles with units.

* :mod:`.style`: :func:`layout`, :data:`DIVERGING`, :data:`SEQUENTIAL`;
* :mod:`.training`: accuracy bars, loss curves, evaluation curves;
* :mod:`.layers`: per-position, per-layer and per-head views of one model or of a base/tuned difference;
* :mod:`.compare`: side-by-side heatmaps, top-k bars and grouped bars (base | tuned | tuned − base).

Figures used by one study only live in that study's ``studies/<name>/figures.py``.
"""

from workbench.plots.compare import grouped_bars, side_by_side_heatmaps, top_k_bars
from workbench.plots.layers import head_heatmap, layer_lines, layer_position_heatmap, per_position_kl
from workbench.plots.style import DIVERGING, SEQUENTIAL, layout
from workbench.plots.training import accuracy_bars, eval_curve, training_curves

__all__ = ["DIVERGING", "SEQUENTIAL", "accuracy_bars", "eval_curve", "grouped_bars", "head_heatmap", "layer_lines",
           "layer_position_heatmap", "layout", "per_position_kl", "side_by_side_heatmaps", "top_k_bars", "training_curves"]
