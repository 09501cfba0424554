"""Per-layer residual-stream differences and per-head output differences, averaged over a corpus with 95%
confidence intervals over rows.

* residual: at ``blocks.{l}.hook_resid_post``, per real position, the relative norm
  ``‖r_tuned − r_base‖₂ / ‖r_base‖₂`` (unitless) and the cosine similarity of the two;
* heads: head output ``o_h = W_O^h z_h`` (``z_h`` = ``blocks.{l}.attn.hook_z`` of head h, ``W_O^h`` its
  ``[d_model, d_head]`` block of ``o_proj``, bias excluded), per real position ``‖o_tuned,h − o_base,h‖₂``
  (residual-stream units), each model with its own ``W_O``.

Each statistic is first averaged over the real positions of a row, then over rows (mean ± t-interval over
rows, :class:`~probes.diff.stats.RowMean`). Source: the standard model-diffing measures of METHODS.md
("Dataset-level model diffing"), as :mod:`probes.diff.prompts` computes them on one prompt set.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from probes.diff.stats import RowMean, TokenMean
from workbench.errors import ConfigError


def check_layer(layer: Any, n_layers: int, name: str = "layer") -> int:
    """``layer`` as an index in ``0..n_layers-1`` (negative counts from the end).

    Raises:
        ConfigError: not an integer, or out of range.
    """
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n_layers <= layer < n_layers:
        raise ConfigError(f"{name} {layer!r} does not exist: the model has layers 0..{n_layers - 1} (or -1..-{n_layers})")
    return layer % n_layers


def row_mean(values: Float[Tensor, "batch pos *stat"], mask: Bool[Tensor, "batch pos"]) -> Float[Tensor, " batch *stat"]:
    """Mean over each row's real positions (rows with none give 0)."""
    m = mask.to(values.dtype).reshape(*mask.shape, *([1] * (values.dim() - 2)))
    return (values * m).sum(1) / m.sum(1).clamp_min(1)


def resid_diff(tuned: Float[Tensor, "batch pos d_model"], base: Float[Tensor, "batch pos d_model"]) -> tuple[Float[Tensor, "batch pos"], Float[Tensor, "batch pos"]]:
    """``(relative norm ‖t − b‖ / ‖b‖, cosine(t, b))`` per position (unitless)."""
    t, b = tuned.float(), base.float()
    bn = b.norm(dim=-1)
    rel = (t - b).norm(dim=-1) / bn.clamp_min(1e-12)
    cos = torch.nn.functional.cosine_similarity(t, b, dim=-1, eps=1e-12)
    return rel, cos


def _q(x: Tensor, g: Tensor, y: Tensor) -> Tensor:
    return torch.einsum("...hd,hde,...he->...h", x, g, y)


def head_diff_norm(z_tuned: Float[Tensor, "*rows n_heads d_head"], z_base: Float[Tensor, "*rows n_heads d_head"],
                   w_o_tuned: Float[Tensor, "d_model n_heads_x_d_head"], w_o_base: Float[Tensor, "d_model n_heads_x_d_head"]
                   ) -> tuple[Float[Tensor, "*rows n_heads"], Float[Tensor, "*rows n_heads"]]:
    """``(‖W_O,t^h z_t,h − W_O,b^h z_b,h‖₂, ‖W_O,b^h z_b,h‖₂)`` per head, without forming the ``d_model``-sized
    head outputs: with ``Δz = z_t − z_b``, ``ΔW = W_t − W_b`` and per-head Gram matrices ``G = W_bᵀW_b``,
    ``‖Δo‖² = ΔzᵀGΔz + z_tᵀ ΔWᵀΔW z_t + 2 Δzᵀ W_bᵀΔW z_t`` (the last two vanish when ``W_O`` is unchanged).
    Cost per position O(n_heads · d_head²) instead of O(n_heads · d_head · d_model)."""
    n_heads = z_base.shape[-2]
    wb = w_o_base.detach().float().unflatten(-1, (n_heads, -1))
    zt, zb = z_tuned.float(), z_base.float()
    g = torch.einsum("mhd,mhe->hde", wb, wb)
    dz = zt - zb
    sq = _q(dz, g, dz)
    if w_o_tuned is not w_o_base and not torch.equal(w_o_tuned, w_o_base):
        dw = w_o_tuned.detach().float().unflatten(-1, (n_heads, -1)) - wb
        sq = sq + _q(zt, torch.einsum("mhd,mhe->hde", dw, dw), zt) + 2 * _q(dz, torch.einsum("mhd,mhe->hde", wb, dw), zt)
    return sq.clamp_min(0).sqrt(), _q(zb, g, zb).clamp_min(0).sqrt()


class LayerStats:
    """Running per-layer residual and per-head output differences (memory O(n_layers · n_heads))."""

    def __init__(self, n_layers: int, n_heads: int) -> None:
        self.n_layers, self.n_heads = n_layers, n_heads
        self.rel, self.cos, self.head = RowMean(), RowMean(), RowMean()
        self.head_base = TokenMean(torch.zeros(n_layers, n_heads, dtype=torch.float64), 0.0)
        self._pending: dict[str, list[Tensor | None]] = {}

    def start_batch(self) -> None:
        self._pending = {"rel": [None] * self.n_layers, "cos": [None] * self.n_layers, "head": [None] * self.n_layers,
                         "head_base": [None] * self.n_layers}

    @torch.no_grad()
    def add_resid(self, layer: int, tuned: Float[Tensor, "batch pos d_model"], base: Float[Tensor, "batch pos d_model"],
                  mask: Bool[Tensor, "batch pos"]) -> None:
        rel, cos = resid_diff(tuned, base)
        self._pending["rel"][layer] = row_mean(rel, mask)
        self._pending["cos"][layer] = row_mean(cos, mask)

    @torch.no_grad()
    def add_heads(self, layer: int, z_tuned: Tensor, z_base: Tensor, w_o_tuned: Tensor, w_o_base: Tensor,
                  mask: Bool[Tensor, "batch pos"]) -> None:
        d, b = head_diff_norm(z_tuned, z_base, w_o_tuned, w_o_base)
        self._pending["head"][layer] = row_mean(d, mask)
        m = mask.to(b.dtype)[..., None]
        self._pending["head_base"][layer] = (b * m).sum((0, 1))

    def end_batch(self, mask: Bool[Tensor, "batch pos"]) -> None:
        """Fold the batch's per-layer values into the running means (rows without real tokens are skipped).

        Raises:
            RuntimeError: a layer's hook did not fire during the batch.
        """
        missing = [k for k, v in self._pending.items() if any(x is None for x in v)]
        if missing:
            raise RuntimeError(f"the forward pass did not reach every layer for {missing}")
        keep = mask.sum(1) > 0
        stack = lambda k: torch.stack(self._pending[k], 1)[keep.to(self._pending[k][0].device)]
        self.rel.add(stack("rel"))
        self.cos.add(stack("cos"))
        self.head.add(stack("head"))
        self.head_base.add(torch.stack(self._pending["head_base"]), int(mask.sum()))
        self._pending = {}

    def result(self) -> dict[str, Any]:
        return {
            "resid_rel_diff": self.rel.result(), "resid_cosine": self.cos.result(), "head_diff_norm": self.head.result(),
            "head_base_norm_mean": self.head_base.mean(),
            "statistics": {"resid_rel_diff": "‖r_tuned − r_base‖ / ‖r_base‖ at hook_resid_post (unitless)",
                           "resid_cosine": "cosine(r_tuned, r_base) at hook_resid_post",
                           "head_diff_norm": "‖W_O,t^h z_t,h − W_O,b^h z_b,h‖₂ (residual-stream units)",
                           "averaging": "mean over a row's real positions, then mean over rows; 95% CI = mean ± t(0.975, n−1)·s/√n over rows"},
        }
