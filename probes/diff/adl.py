"""Activation Difference Lens (ADL), part 1: the per-position mean differences δ_j and their logit lens.

Source: Minder, Dumas, Slocum, Casademunt, Holmes, West, Nanda, "Narrow Finetuning Leaves Clearly Readable Traces in
Activation Differences", arXiv 2510.13900 (2025), §3, and the recipe of the authors' public diffing toolkit
(METHODS.md, "Activation Difference Lens"). Readouts of δ_j: :mod:`probes.diff.patchscope`,
:mod:`probes.diff.steering`; all of them per position: :mod:`probes.diff.adl_readouts`.

As the reference:

* **layer** ``int(0.5 · (n_layers − 1))`` (:func:`default_layer`), read at ``blocks.{layer}.hook_resid_post``;
* **one mean difference per position**: ``δ_j = mean over rows of (h_tuned − h_base)`` at token position ``j`` of the
  model input, ``j = 0 … k−1`` (``k = 5``); position 0 (the BOS when the model prepends one, else the first text token)
  is the attention sink, whose difference is orders of magnitude larger, so positions are **never pooled** — a pooled
  δ is kept only as a labelled extra (``delta_pooled``);
* **scale**: each readout uses ``s · n̄ · δ_j / ‖δ_j‖`` with ``n̄`` = the fine-tuned model's mean ‖h‖ at the layer over
  positions ≥ k (:attr:`DeltaAccumulator` ``mean_tuned_norm``);
* **logit lens** of δ_j and −δ_j through the fine-tuned model's final norm and unembedding (:func:`lens_tokens`).

Added here (the reference has no such check): a **split-half cosine** per position — the cosine between δ_j computed on
the even-numbered and on the odd-numbered rows; near 1 means the corpus is large enough for δ_j to be stable.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from probes.diff.stats import TokenMean
from workbench.architecture import readout


def default_layer(n_layers: int) -> int:
    """The reference's ADL layer: relative depth 0.5, ``int(0.5 · (n_layers − 1))`` (14 of SmolLM2's 30 layers)."""
    return int(0.5 * (n_layers - 1))


class DeltaAccumulator:
    """Running ``Σ (h_tuned − h_base)`` at each of the first ``k`` token positions, over all rows and over the even
    and odd rows apart, plus the mean residual norms over positions ≥ k (memory O(k · d_model)).

    Args:
        k: positions per row (``0 … k−1`` of the model input, BOS included when the model prepends one).
        d_model: residual width.
    """

    def __init__(self, k: int, d_model: int) -> None:
        self.k = int(k)
        self.sums = torch.zeros(2, k, d_model, dtype=torch.float64)  # [row parity, position, d_model]
        self.counts = torch.zeros(2, k, dtype=torch.long)
        self.tuned_norm, self.base_norm = TokenMean(), TokenMean()
        self.rows = 0

    @torch.no_grad()
    def update(self, tuned: Float[Tensor, "batch pos d_model"], base: Float[Tensor, "batch pos d_model"],
               mask: Bool[Tensor, "batch pos"]) -> None:
        """Add one batch (right-padded; ``mask`` marks real tokens). Rows are numbered across batches."""
        mask = mask.bool().to(base.device)
        parity = (torch.arange(mask.shape[0], device=mask.device) + self.rows) % 2
        diff = tuned[:, : self.k].double() - base[:, : self.k].double()
        for j in range(min(self.k, mask.shape[1])):
            for half in (0, 1):
                valid = mask[:, j] & (parity == half)
                self.sums[half, j] += diff[valid, j].sum(0).cpu()
                self.counts[half, j] += int(valid.sum())
        later = mask.clone()
        later[:, : self.k] = False
        self.tuned_norm.add(tuned[later].double().norm(dim=-1).sum(), int(later.sum()))
        self.base_norm.add(base[later].double().norm(dim=-1).sum(), int(later.sum()))
        self.rows += mask.shape[0]

    def result(self) -> dict[str, Any]:
        """``delta_by_position`` ``[k, d_model]`` (a row shorter than ``j + 1`` tokens does not count at ``j``), ``n`` and
        norm per position, ``split_half_cosine`` per position (``None`` where a half has no row), ``mean_tuned_norm``
        and ``mean_base_norm`` over positions ≥ k (``nan`` when no row is longer than k), and the labelled extra
        ``delta_pooled`` (the mean over every (row, position < k) pair — dominated by position 0)."""
        total, n = self.sums.sum(0), self.counts.sum(0)
        per = total / n.clamp_min(1)[:, None]
        halves = self.sums / self.counts.clamp_min(1)[..., None]
        cos = [float(torch.nn.functional.cosine_similarity(halves[0, j], halves[1, j], dim=0))
               if bool((self.counts[:, j] > 0).all()) else None for j in range(self.k)]
        return {"delta_by_position": per, "n_by_position": n.tolist(), "delta_norm_by_position": per.norm(dim=-1).tolist(),
                "split_half_cosine": cos, "mean_tuned_norm": self.tuned_norm.mean() if self.tuned_norm.count else float("nan"),
                "mean_base_norm": self.base_norm.mean() if self.base_norm.count else float("nan"),
                "delta_pooled": total.sum(0) / max(int(n.sum()), 1)}


def scaled(delta: Float[Tensor, " d_model"], norm: float, scale: float = 1.0) -> Float[Tensor, " d_model"]:
    """``scale · norm · δ/‖δ‖`` (the reference's scaling; zeros when δ = 0)."""
    n = delta.norm()
    return delta * (scale * norm / n) if float(n) > 0 else torch.zeros_like(delta)


def top_tokens(logits: Float[Tensor, " d_vocab"], k: int, decode: Any) -> list[dict[str, Any]]:
    """The ``k`` most likely tokens of one logit vector: ``{"id", "token", "logit", "prob"}``, most likely first."""
    probs = logits.float().softmax(-1)
    v, i = torch.topk(logits.float(), min(k, logits.numel()))
    return [{"id": int(t), "token": decode(int(t)), "logit": float(x), "prob": float(probs[t])} for x, t in zip(v, i)]


@torch.no_grad()
def lens_tokens(model: nn.Module, delta: Float[Tensor, " d_model"], top_k: int, decode: Any = str) -> dict[str, list]:
    """Logit lens of δ: the top tokens of ``softmax(unembed(final_norm(δ)))`` ("positive") and of the same for −δ
    ("negative"), through ``model``'s own final norm, unembedding and soft-cap (the reference reads the fine-tuned
    model; pass ``pair.tuned`` inside ``pair.tuned_context()``); ``top_k`` tokens each (the caller's setting, e.g.
    :func:`~probes.diff.adl_readouts.adl_readouts`' ``top_k``).

    Raises:
        ConfigError: the model has no final norm / unembedding (:func:`workbench.architecture.readout`).
    """
    p = next(model.parameters())
    d = delta.to(p.device, p.dtype)
    return {"positive": top_tokens(readout(model, d), top_k, decode), "negative": top_tokens(readout(model, -d), top_k, decode)}
