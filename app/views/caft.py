"""The *Method* view of CAFT (Casademunt et al., arXiv 2507.16795, §3): the ablated directions per layer (the
orthonormal bases ``q_{l}``) and the projection of both models' ``hook_resid_post`` on them for the current prompt.

The directions come from the tuned side itself (an adapter of this method) or from the run folder (the method's
extras: :func:`workbench.methods.caft.load_extras`), since a CAFT-trained model is evaluated without its ablation;
:func:`app.views.method.method_views` finds both and shows them with this view.
"""

from __future__ import annotations

import torch
from torch import nn

from app.views import register_method_view
from app.views.analysis import PromptAnalysis
from app.views.method import MethodView
from workbench import plots

METHOD = "caft"


def caft_view(ablation: nn.Module, model: nn.Module | None = None, analysis: PromptAnalysis | None = None, pos: int = -1) -> MethodView:
    """CAFT: the ablated subspace per layer and (with ``analysis``) each model's ``hook_resid_post``
    projected on its orthonormal basis, ``x · q_j`` for every direction j, at every position.

    When the ablation itself is the tuned side, the bridge caches ``hook_resid_post`` before the ablation
    hook (later layers see the ablated stream), so the tuned projections shown are the pre-ablation values.
    """
    layers, counts = list(ablation.config.layers), list(ablation.config.n_directions)
    rows = [{"layer": l, "directions": k, "source": getattr(ablation.config, "source", "")} for l, k in zip(layers, counts)]
    figs = []
    if analysis is not None:
        p = pos % analysis.n_pos
        proj, frac = {}, {}
        for role in ("base", "tuned"):
            parts = [analysis.resid_post[role][l] @ ablation.basis(l).detach().float().cpu() for l in layers]  # [pos, k_l] each
            proj[role] = torch.cat(parts, dim=1).T  # [sum k, pos]
            norms = [analysis.resid_post[role][l, p].norm().clamp_min(1e-12) for l in layers]
            frac[role] = [float(part[p].norm() / n) for part, n in zip(parts, norms)]
        names = [f"L{l}.q{j}" for l, k in zip(layers, counts) for j in range(k)]
        panels = {"base": proj["base"].tolist(), "tuned": proj["tuned"].tolist(), "tuned − base": (proj["tuned"] - proj["base"]).tolist()}
        figs.append(plots.side_by_side_heatmaps(
            panels, analysis.labels(), names, "CAFT directions: projection of hook_resid_post on each ablated direction", "x·q",
            diff_panels=tuple(panels), diff_colorbar="x·q (residual units)", yaxis="layer.direction"))
        figs.append(plots.grouped_bars([f"L{l}" for l in layers], frac,
                                           f"Fraction of ‖resid_post‖ in the ablated subspace at position {p} ({analysis.tokens[p]!r})",
                                           "‖x Q‖ / ‖x‖", "layer"))
    summary = (f"CAFT ablation: {sum(counts)} directions at {len(layers)} layer(s) "
               f"({', '.join(f'L{l}: {k}' for l, k in zip(layers, counts))})" + (f"; source {rows[0]['source']!r}." if rows and rows[0]["source"] else "."))
    return MethodView("CAFT directions", summary, figs, rows, uses_position=analysis is not None)


register_method_view(METHOD, caft_view)
