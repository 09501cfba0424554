"""The *Method* view: what the fine-tuning method touched (no streamlit here; :func:`app.render.method_tab` draws it).

Each method's own view is a module of this package that registers it for the method's name
(:func:`app.views.register_method_view`: ``app/views/lofit.py``, ``neft.py``, ``caft.py``); :func:`method_views`
picks it by the intervention's ``method`` attribute, and falls back to

* any other intervention: every parameter / buffer with its shape and norm, and the norm per layer;
* a tuned *model* (no intervention): the relative weight change ‖W_tuned − W_base‖ / ‖W_base‖ per layer
  and module.

What a run folder keeps beyond its adapter (a method's extras, e.g. an ablation it was trained under, read by
that method's spec: :func:`workbench.methods.run_extras`) is shown too, with the view of its own method.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import plotly.graph_objects as go
import torch
from torch import Tensor, nn

from app.views import METHOD_VIEWS, PageView, ViewContext, register_view
from app.views.analysis import PromptAnalysis
from workbench import plots

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


def view_of(intervention: nn.Module, model: nn.Module, analysis: PromptAnalysis | None = None, pos: int = -1) -> MethodView:
    """The view registered for the intervention's method (:data:`app.views.METHOD_VIEWS`), else :func:`generic_view`."""
    spec = METHOD_VIEWS.find(str(getattr(intervention, "method", "")))
    if spec is None:
        return generic_view(intervention, model, analysis)
    return spec.build(intervention, model, analysis, pos=pos)


def method_views(loaded, analysis: PromptAnalysis | None = None, pos: int = -1) -> list[MethodView]:
    """The views for a :class:`~workbench.models.tuned.LoadedPair`: by intervention method (weight changes for a
    tuned model), then the extras other methods stored in its run folder (e.g. the ablation it was trained under).

    Raises:
        CheckpointError / MismatchError / ConfigError: stored extras that cannot be loaded onto this model.
    """
    from workbench.methods import run_extras

    if loaded.intervention is None:
        if loaded.pair.base is loaded.pair.tuned:
            return [MethodView("Nothing changed", "Base and tuned are the same model: there is nothing to show.")]
        return [weight_change_view(loaded.pair.base, loaded.pair.tuned)]
    out = [view_of(loaded.intervention, loaded.pair.base, analysis, pos)]
    for extras in run_extras(loaded.run_dir, loaded.pair.base_info, skip=loaded.method).values():
        out += [view_of(x, loaded.pair.base, analysis, pos) for x in extras.values() if isinstance(x, nn.Module)]
    return out


def method_view(loaded, analysis: PromptAnalysis | None = None, pos: int = -1) -> MethodView:
    """The first of :func:`method_views` (the view of the tuned side itself)."""
    return method_views(loaded, analysis, pos)[0]


def _show(ctx: ViewContext) -> int:
    from app import render

    try:
        return render.method_tab(ctx.loaded, ctx.analysis)[0]
    except Exception as exc:  # noqa: BLE001 — an intervention this view cannot read: say so in the page
        ctx.page.error(f"Cannot show what the method touched ({type(exc).__name__}: {exc}). The other views still work; "
                       "if this intervention should be readable, it is a bug: the server's log has the details.")
        return 0


register_view(PageView("Method", order=60, needs={"pair"}, render=_show))
