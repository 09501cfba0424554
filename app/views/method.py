"""What the fine-tuning method touched, for the app (no streamlit): one view per method, chosen by the
intervention's ``method`` attribute, and a generic view for any other method or a plain tuned model.

* LoFiT (Yin, Ye, Durrett, NeurIPS 2024, §3.2): the selected heads, ‖v_h‖ and the offset each head adds
  to the residual stream, ‖W_O,h v_h‖ (exact: the offset folds into ``o_proj``).
* NeFT (Xu et al., COLING 2025, §3): the selected neurons per layer, the norms of their gate / up / down
  weight deltas, and the selected neurons' activations (``mlp.hook_post``) for the current prompt.
* CAFT (Casademunt et al., arXiv 2507.16795, §3): the ablated directions per layer (the orthonormal
  bases ``q_{l}``) and the projection of both models' ``hook_resid_post`` on them for the current prompt.
  The directions come from the tuned side itself (a ``"caft"`` adapter) or from the run folder
  (``ablation.safetensors`` written by ``train_caft``, or a ``"caft"`` adapter folder inside it), since
  a CAFT-trained model is evaluated without its ablation.
* any other intervention: every parameter / buffer with its shape and norm, and the norm per layer.
* a tuned *model* (no intervention): the relative weight change ‖W_tuned − W_base‖ / ‖W_base‖ per layer
  and module.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
import torch
from torch import Tensor, nn

from app.views.analysis import PromptAnalysis
from workbench import plots
from workbench.architecture import w_o

#: ``layers.{l}.`` in a parameter name, also with the dots flattened to ``__`` (nn.ParameterDict keys).
_LAYER = re.compile(r"(?:^|\.|_)layers(?:\.|__)(\d+)(?:\.|__)")


@dataclass
class MethodView:
    """What the app shows for one method: a summary line, figures, a table (rows of dicts), the heads to
    mark in head heatmaps, and whether the figures depend on the chosen position."""

    title: str
    summary: str
    figures: list[go.Figure] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)
    marked_heads: list[list[int]] = field(default_factory=list)
    uses_position: bool = False


def lofit_offset_norms(intervention: nn.Module, model: nn.Module) -> list[dict]:
    """Per selected head: ``{"layer", "head", "‖v_h‖", "‖W_O,h v_h‖"}`` (the latter in residual units,
    with ``model``'s own ``W_O``)."""
    rows = []
    offsets = intervention.offsets.detach().float()
    for (layer, head), v in zip(intervention.config.heads, offsets):
        w_h = w_o(model, layer, head).detach().float()
        rows.append({"layer": layer, "head": head, "‖v_h‖": float(v.norm()), "‖W_O,h v_h‖": float((w_h @ v.to(w_h.device)).norm())})
    return rows


def lofit_view(intervention: nn.Module, model: nn.Module, analysis: PromptAnalysis | None = None) -> MethodView:
    """LoFiT: heads and offset norms (``analysis`` is not needed: the offsets do not depend on the prompt)."""
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


def _per_layer(named: list[tuple[str, Tensor]]) -> dict[int, float]:
    sq: dict[int, float] = {}
    for name, t in named:
        m = _LAYER.search(name)
        if m:
            sq[int(m.group(1))] = sq.get(int(m.group(1)), 0.0) + float(t.detach().float().pow(2).sum())
    return {l: v ** 0.5 for l, v in sorted(sq.items())}


def generic_view(intervention: nn.Module, model: nn.Module | None = None, analysis: PromptAnalysis | None = None) -> MethodView:
    """Any intervention: each parameter / buffer with shape and L2 norm, and the norm per layer when the
    names carry a ``layers.{l}.`` index."""
    named = list(intervention.state_dict().items())
    rows = [{"name": n, "shape": "×".join(map(str, t.shape)) or "scalar", "numel": t.numel(), "‖·‖₂": float(t.detach().float().norm())} for n, t in named]
    figs = []
    per_layer = _per_layer(named)
    if per_layer:
        figs.append(plots.grouped_bars([str(l) for l in per_layer], {"‖·‖₂": list(per_layer.values())},
                                           "Norm of the intervention's tensors per layer", "L2 norm", "layer"))
    method = getattr(intervention, "method", type(intervention).__name__)
    summary = (f"{method}: no dedicated view yet; showing its {len(rows)} tensors "
               f"({sum(r['numel'] for r in rows):,} values) with their norms.")
    return MethodView(f"{method} intervention", summary, figs, rows)


def _canonical(name: str) -> str:
    return name.replace(".original_component", "")


@torch.no_grad()
def weight_change_view(base: nn.Module, tuned: nn.Module) -> MethodView:
    """A tuned model without an intervention: ‖W_tuned − W_base‖ per parameter as a heatmap of layer ×
    module, and a table with the relative change ‖ΔW‖ / ‖W_base‖. A parameter only the tuned model has
    (e.g. an ``o_proj`` bias from an exact LoFiT merge) counts against zeros; parameters outside the
    decoder layers appear in the table only."""
    b = {_canonical(n): p for n, p in base.named_parameters()}
    t = {_canonical(n): p for n, p in tuned.named_parameters()}
    rows, grid, kinds = [], {}, []
    for name in sorted(t):
        if name in b and b[name].shape != t[name].shape:
            continue
        ref = b[name].float() if name in b else torch.zeros_like(t[name], dtype=torch.float32)
        delta = float((t[name].float() - ref).norm())
        rows.append({"parameter": name, "‖ΔW‖": delta, "‖ΔW‖/‖W_base‖": delta / float(ref.norm()) if name in b and float(ref.norm()) > 0 else None,
                     "only in tuned": name not in b})
        m = _LAYER.search(name)
        if m:
            kind = name[m.end():].removesuffix(".weight")
            if kind not in kinds:
                kinds.append(kind)
            grid[(int(m.group(1)), kind)] = delta
    layers = sorted({l for l, _ in grid})
    figs = []
    if grid:
        z = [[grid.get((l, k), 0.0) for k in kinds] for l in layers]
        figs.append(plots.side_by_side_heatmaps({"‖W_tuned − W_base‖": z}, kinds, layers, "Weight change per layer and module (Frobenius norm)",
                                                    "‖ΔW‖", xaxis="module"))
    changed = sum(1 for r in rows if r["‖ΔW‖"] > 0)
    new = sum(1 for r in rows if r["only in tuned"])
    summary = (f"Tuned model without an intervention: {changed} of {len(rows)} parameters differ from the base"
               + (f" ({new} exist only in the tuned model)." if new else "."))
    return MethodView("Weight changes", summary, figs, sorted(rows, key=lambda r: -r["‖ΔW‖"]))


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


def find_caft_ablation(run_dir: Path | None, model_info) -> nn.Module | None:
    """The CAFT ablation stored in a run folder, or ``None``: a ``"caft"`` adapter folder inside it, else
    an ``ablation.safetensors`` (buffers ``q_{layer}`` [d_model, k]) written by ``train_caft``.

    Raises:
        CheckpointError / MismatchError / ConfigError: a stored ablation that cannot be loaded onto this
            model (see :func:`workbench.artifacts.load_intervention`).
    """
    if run_dir is None or not Path(run_dir).is_dir():
        return None
    from workbench.artifacts import load_intervention, load_tensors, read_json
    from workbench.methods import get_method

    for meta_path in sorted(Path(run_dir).glob("*/adapter.json")) + sorted(Path(run_dir).glob("*/*/adapter.json")):
        if read_json(meta_path).get("method") == "caft":
            return load_intervention(meta_path.parent, model_info)
    found = [path for pattern in ("ablation.safetensors", "*/ablation.safetensors", "*/*/ablation.safetensors")
             for path in sorted(Path(run_dir).glob(pattern))]
    if not found:
        return None
    state = load_tensors(found[0])
    layers = sorted(int(k.removeprefix("q_")) for k in state if k.startswith("q_") and k[2:].isdigit())
    spec = get_method("caft")
    config = spec.config_cls(layers=layers, n_directions=[int(state[f"q_{l}"].shape[1]) for l in layers], source=f"{found[0].relative_to(run_dir)}")
    ablation = spec.intervention_cls(config, model_info.to_dict())
    ablation.load_state_dict(state, strict=True)
    return ablation


#: method name -> view function ``(intervention, model, analysis[, pos]) -> MethodView``.
VIEWS: dict[str, Callable[..., MethodView]] = {"lofit": lofit_view, "neft": neft_view, "caft": caft_view}
_TAKES_POS = (neft_view, caft_view)


def method_views(loaded, analysis: PromptAnalysis | None = None, pos: int = -1) -> list[MethodView]:
    """The views for a :class:`~app.views.load.LoadedPair`: by intervention method (weight changes for a
    tuned model), then the CAFT directions stored in its run folder, if any."""
    if loaded.intervention is None:
        if loaded.pair.base is loaded.pair.tuned:
            return [MethodView("Nothing changed", "Base and tuned are the same model: there is nothing to show.")]
        return [weight_change_view(loaded.pair.base, loaded.pair.tuned)]
    view = VIEWS.get(loaded.method, generic_view)
    kw = {"pos": pos} if view in _TAKES_POS else {}
    out = [view(loaded.intervention, loaded.pair.base, analysis, **kw)]
    if loaded.method != "caft":
        ablation = find_caft_ablation(loaded.run_dir, loaded.pair.base_info)
        if ablation is not None:
            out.append(caft_view(ablation, loaded.pair.base, analysis, pos=pos))
    return out


def method_view(loaded, analysis: PromptAnalysis | None = None, pos: int = -1) -> MethodView:
    """The first of :func:`method_views` (the view of the tuned side itself)."""
    return method_views(loaded, analysis, pos)[0]
