"""The *Method* view of NeFT (Xu et al., COLING 2025, §3): the selected neurons per layer, the norms of their gate /
up / down weight deltas, and the selected neurons' activations (``mlp.hook_post``) for the current prompt."""

from __future__ import annotations

import torch
from torch import nn

from app.views import register_method_view
from app.views.analysis import PromptAnalysis
from app.views.method import MethodView
from workbench import plots

METHOD = "neft"


def neft_view(intervention: nn.Module, model: nn.Module, analysis: PromptAnalysis | None = None, pos: int = -1, top_n: int = 30) -> MethodView:
    """NeFT: selected neurons per layer, their delta norms, and (with ``analysis``) their activations at ``pos``."""
    neurons = [tuple(n) for n in intervention.config.neurons]
    dims = intervention.dims
    rows = []
    for layer in sorted({l for l, _ in neurons}):
        idx, d_gate, d_up, d_down = intervention.layer_deltas(layer)
        for i, g, u, d in zip(idx, d_gate.detach().float(), d_up.detach().float(), d_down.detach().float()):
            rows.append({"layer": layer, "neuron": int(i), "‖Δ gate row‖": float(g.norm()), "‖Δ up row‖": float(u.norm()), "‖Δ down column‖": float(d.norm())})
    counts = [sum(1 for l, _ in neurons if l == layer) for layer in range(dims.n_layers)]
    figs = [plots.grouped_bars([str(l) for l in range(dims.n_layers)], {"selected neurons": counts},
                                   f"NeFT: selected neurons per layer (of d_mlp = {dims.d_mlp})", "neurons", "layer")]
    top = sorted(rows, key=lambda r: -(r["‖Δ gate row‖"] ** 2 + r["‖Δ up row‖"] ** 2 + r["‖Δ down column‖"] ** 2))[:top_n]
    figs.append(plots.grouped_bars([f"L{r['layer']}.N{r['neuron']}" for r in top],
                                       {k: [r[k] for r in top] for k in ("‖Δ gate row‖", "‖Δ up row‖", "‖Δ down column‖")},
                                       f"NeFT: the {len(top)} neurons with the largest weight deltas", "norm", "layer.neuron"))
    if analysis is not None and neurons:
        p = pos % analysis.n_pos
        act = {role: torch.stack([analysis.mlp_post[role][l, p, n].float() for l, n in neurons]) for role in ("base", "tuned")}
        order = (act["tuned"] - act["base"]).abs().argsort(descending=True)[:top_n].tolist()
        figs.append(plots.grouped_bars([f"L{neurons[i][0]}.N{neurons[i][1]}" for i in order],
                                           {role: [float(act[role][i]) for i in order] for role in ("base", "tuned")},
                                           f"NeFT neurons' activations (mlp.hook_post) at position {p} ({analysis.tokens[p]!r}), largest change first",
                                           "activation", "layer.neuron"))
    n_params = sum(t.numel() for t in intervention.state_dict().values())
    summary = f"NeFT: {len(neurons)} neurons in {sum(1 for c in counts if c)} layers, {n_params:,} trainable parameters (gate/up rows and down columns)."
    return MethodView("NeFT neurons", summary, figs, rows, uses_position=analysis is not None)


register_method_view(METHOD, neft_view)
