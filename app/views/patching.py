"""One-click activation patching for the app's current pair and prompt (no streamlit).

Runs :func:`probes.patching.activation_patch` (the library's engine) on the prompt with the effect measured on the
tracked tokens' logit difference at the last position, ``logit(answer) − logit(contrast)`` in nats:

* **base ← tuned** / **tuned ← base** (CMAP, Prakash et al. 2024 §5): the target model runs the prompt with the
  chosen sites' activations taken from the other model on the same prompt (``source_model=``);
* **clean ← corrupt** / **corrupt ← clean** (causal tracing, Meng et al. 2022 §2.1) in one model: the target prompt
  runs with the sites' activations from the other prompt (the counterfactual), which must have as many tokens.

Sites: every head's output ``attn.hook_z`` at the last position (:func:`probes.patch_sites.head_sites`), every layer's
``hook_resid_pre`` at the last position, or every (layer, position) (:func:`probes.patch_sites.layer_pos_sites`).
The effect is ``metric(patched) − metric(target run)`` per site.
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
from jaxtyping import Float
from torch import Tensor

from app.views import PageView, ViewContext, register_view
from app.views.analysis import tokenize_prompt
from probes.patch_sites import Side, head_sites, layer_pos_sites
from probes.patching import activation_patch
from workbench import plots
from workbench.architecture import Dims
from workbench.errors import ConfigError
from workbench.sites import Site

#: direction label -> (target role, source role, target prompt, source prompt); prompts: "clean" (the prompt) or
#: "corrupt" (the counterfactual).
DIRECTIONS = {
    "base ← tuned (same prompt)": ("base", "tuned", "clean", "clean"),
    "tuned ← base (same prompt)": ("tuned", "base", "clean", "clean"),
    "clean ← corrupt, base model": ("base", "base", "clean", "corrupt"),
    "clean ← corrupt, tuned model": ("tuned", "tuned", "clean", "corrupt"),
    "corrupt ← clean, base model": ("base", "base", "corrupt", "clean"),
    "corrupt ← clean, tuned model": ("tuned", "tuned", "corrupt", "clean"),
}
#: what is patched, one variant per site
SITES = ["heads (attn.hook_z) at the last position", "layers (hook_resid_pre) at the last position",
         "layers × positions (hook_resid_pre)"]


@dataclass
class PatchResult:
    """Effects of patching each site, in nats of ``logit(answer) − logit(contrast)`` at the last position.

    Attributes:
        direction, sites: the labels chosen (keys of :data:`DIRECTIONS`, entries of :data:`SITES`).
        effects: ``[n_layers, n_heads]`` (heads), ``[n_layers]`` (layers at the last position) or
            ``[n_layers, pos]`` (layers × positions).
        tokens: the target prompt's tokens (position labels).
        answer, contrast: the tracked tokens' text.
    """

    direction: str
    sites: str
    effects: Float[Tensor, ...]
    tokens: list[str]
    answer: str
    contrast: str


def patch(pair, prompt: str, counterfactual: str | None, answer_id: int, contrast_id: int, direction: str, sites: str,
          answer: str = "", contrast: str = "") -> PatchResult:
    """Activation patching of ``sites`` in ``direction`` (see the module docstring) for one prompt; the caller holds
    the pair's lock (the tuned side may hook the shared base weights).

    Raises:
        ConfigError: an unknown direction or site kind; a clean ↔ corrupt direction without a counterfactual, or
            one with a different token count; an empty or too long prompt.
    """
    if direction not in DIRECTIONS or sites not in SITES:
        raise ConfigError(f"unknown patching {direction!r} / {sites!r}: pick one of {list(DIRECTIONS)} and {SITES}")
    target_role, source_role, target_which, source_which = DIRECTIONS[direction]
    ids = {"clean": tokenize_prompt(pair, prompt)}
    if "corrupt" in (target_which, source_which):
        if not counterfactual or not counterfactual.strip():
            raise ConfigError("this direction patches between the prompt and its counterfactual: type a counterfactual prompt "
                              "(with as many tokens) beside the prompt")
        ids["corrupt"] = tokenize_prompt(pair, counterfactual)
        if ids["corrupt"].shape != ids["clean"].shape:
            raise ConfigError(f"the counterfactual has {ids['corrupt'].shape[1]} tokens and the prompt {ids['clean'].shape[1]}: "
                              "position-wise patching needs equal lengths; change a word for another of one token")
    target, source = ids[target_which], ids[source_which]
    dims = Dims.of(pair.base)
    n_pos = target.shape[1]
    if sites == SITES[0]:
        site_list: list = head_sites(dims, pos=-1)
    elif sites == SITES[1]:
        site_list = [Site(layer, "hook_resid_pre", pos=-1) for layer in range(dims.n_layers)]
    else:
        site_list = layer_pos_sites(dims, n_pos)

    def metric(logits: Tensor) -> Tensor:
        return logits[:, answer_id] - logits[:, contrast_id]

    src_model = None if source_role == target_role else Side.of(pair, source_role)
    # The pair's models are bridged once the analysis ran; the library then runs every variant whole by itself
    # (probes.shared_prefix.takes_cache), so identical activations give zero effects (tests/test_app_research.py).
    effects = activation_patch(Side.of(pair, target_role), site_list, target, source, metric, source_model=src_model)[:, 0]
    if sites == SITES[0]:
        effects = effects.reshape(dims.n_layers, dims.n_heads)
    elif sites == SITES[2]:
        effects = effects.reshape(dims.n_layers, n_pos)
    tokens = [pair.tokenizer.decode([int(t)]) for t in target[0]]
    return PatchResult(direction, sites, effects.float().cpu(), tokens, answer, contrast)


def patch_figure(r: PatchResult, marked=()) -> go.Figure:
    """The effects as a figure: layer × head heatmap (``marked`` heads boxed), a line over layers, or a layer ×
    position heatmap; signed values on a diverging scale centred at 0, in nats."""
    what = f"Activation patching, {r.direction}: effect on logit({r.answer!r}) − logit({r.contrast!r}) at the last position"
    unit = "Δ logit difference (nats)"
    if r.effects.ndim == 1:
        fig = plots.layer_lines({"effect": r.effects.tolist()}, f"{what}, per layer (hook_resid_pre)", unit)
        return fig.add_hline(y=0, line={"color": "grey", "width": 1, "dash": "dot"})
    if r.sites == SITES[0]:
        return plots.head_heatmap(r.effects.tolist(), f"{what}, per head (attn.hook_z)", unit, marked=marked, diverging=True,
                                  marked_name="intervened head")
    return plots.layer_position_heatmap(r.effects.tolist(), r.tokens, f"{what}, per layer and position (hook_resid_pre)", unit,
                                        diverging=True)


def patch_rows(r: PatchResult) -> list[dict]:
    """The effects as table rows (``layer``, ``head`` or ``position``, ``effect (nats)``), largest |effect| first."""
    e = r.effects
    if e.ndim == 1:
        rows = [{"layer": l, "effect (nats)": float(v)} for l, v in enumerate(e.tolist())]
    elif r.sites == SITES[0]:
        rows = [{"layer": l, "head": h, "effect (nats)": float(e[l, h])} for l in range(e.shape[0]) for h in range(e.shape[1])]
    else:
        rows = [{"layer": l, "position": f"{p}:{r.tokens[p]}", "effect (nats)": float(e[l, p])} for l in range(e.shape[0])
                for p in range(e.shape[1])]
    return sorted(rows, key=lambda row: -abs(row["effect (nats)"]))


def _show(ctx: ViewContext) -> list:
    """The *Patching* view (drawn by :func:`app.render_patch.patching_tab`: one click runs it under the pair's lock)."""
    from app import render_patch

    return render_patch.patching_tab(ctx.loaded, ctx.analysis, ctx.counterfactual, ctx.marked, ctx.key)


register_view(PageView("Patching", order=50, needs={"prompt", "marked_heads"}, render=_show, exports=True))

__all__ = ["DIRECTIONS", "SITES", "PatchResult", "patch", "patch_figure", "patch_rows"]
