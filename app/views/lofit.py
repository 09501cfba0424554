"""The *Method* view of LoFiT (Yin, Ye, Durrett, NeurIPS 2024, §3.2): the selected heads, ‖v_h‖ and the offset
each head adds to the residual stream, ‖W_O,h v_h‖ (exact: the offset folds into ``o_proj``); the heads are
marked in the attention and head views."""

from __future__ import annotations

import torch
from torch import nn

from app.views import register_method_view
from app.views.analysis import PromptAnalysis
from app.views.method import MethodView
from workbench import plots
from workbench.architecture import w_o

METHOD = "lofit"


def lofit_offset_norms(intervention: nn.Module, model: nn.Module) -> list[dict]:
    """Per selected head: ``{"layer", "head", "‖v_h‖", "‖W_O,h v_h‖"}`` (the latter in residual units,
    with ``model``'s own ``W_O``)."""
    rows = []
    offsets = intervention.offsets.detach().float()
    for (layer, head), v in zip(intervention.config.heads, offsets):
        w_h = w_o(model, layer, head).detach().float()
        rows.append({"layer": layer, "head": head, "‖v_h‖": float(v.norm()), "‖W_O,h v_h‖": float((w_h @ v.to(w_h.device)).norm())})
    return rows


def lofit_view(intervention: nn.Module, model: nn.Module, analysis: PromptAnalysis | None = None, pos: int = -1) -> MethodView:
    """LoFiT: heads and offset norms (``analysis`` and ``pos`` are not needed: the offsets do not depend on the prompt)."""
    rows = lofit_offset_norms(intervention, model)
    dims = intervention.dims
    grid = torch.zeros(dims.n_layers, dims.n_heads)
    for r in rows:
        grid[r["layer"], r["head"]] = r["‖W_O,h v_h‖"]
    heads = [[r["layer"], r["head"]] for r in rows]
    labels = [f"L{r['layer']}.H{r['head']}" for r in rows]
    figs = [
        plots.head_heatmap(grid.tolist(), "LoFiT offsets: ‖W_O,h v_h‖ each selected head adds to the residual stream", "‖W_O,h v_h‖ (residual units)",
                           marked=heads, marked_name="LoFiT head"),
        plots.grouped_bars(labels, {"‖v_h‖ (head space)": [r["‖v_h‖"] for r in rows], "‖W_O,h v_h‖ (residual)": [r["‖W_O,h v_h‖"] for r in rows]},
                               "LoFiT offset norms per selected head", "norm", "layer.head"),
    ]
    total = dims.n_layers * dims.n_heads
    summary = f"LoFiT: offsets on {len(rows)} of {total} heads ({len(rows) / total:.1%}), {intervention.offsets.numel():,} trainable parameters."
    return MethodView("LoFiT heads and offsets", summary, figs, rows, heads)


register_method_view(METHOD, lofit_view)
