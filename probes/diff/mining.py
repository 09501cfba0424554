"""Diff mining: which vocabulary tokens does fine-tuning make more or less likely, over a whole corpus?

Statistics, for every vocabulary token v, over every real position t of the corpus (N positions):

* ``mean_delta_prob[v] = (1/N) Σ_t (p_tuned(v | t) − p_base(v | t))`` — probability mass moved (unitless;
  dominated by tokens that are likely somewhere);
* ``mean_delta_logprob[v] = (1/N) Σ_t (log p_tuned(v | t) − log p_base(v | t))`` — nats; dominated by
  rare tokens, whose tail log-probabilities move most;
* ``top1_gained[v]`` / ``top1_lost[v]`` — positions where v becomes / stops being the top-1 prediction.

Source: the token-level "what does the tuned model predict more" readout of dataset-level diffing
(METHODS.md, "Dataset-level model diffing"; cf. the logit-diff mining of Minder et al. 2025, arXiv 2510.13900, §3).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


class TokenShift:
    """Running per-vocabulary sums of Δprob and Δlog-prob and top-1 changes (memory O(d_vocab))."""

    def __init__(self, d_vocab: int) -> None:
        self.d_vocab = int(d_vocab)
        self.dp = torch.zeros(d_vocab, dtype=torch.float64)
        self.dlp = torch.zeros(d_vocab, dtype=torch.float64)
        self.gained = torch.zeros(d_vocab, dtype=torch.long)
        self.lost = torch.zeros(d_vocab, dtype=torch.long)
        self.n = 0

    @torch.no_grad()
    def update(self, tuned_logprobs: Float[Tensor, "rows pos d_vocab"], base_logprobs: Float[Tensor, "rows pos d_vocab"],
               mask: Bool[Tensor, "rows pos"], base_top1: Int[Tensor, "rows pos"], tuned_top1: Int[Tensor, "rows pos"]) -> None:
        """Add the real positions (``mask``) of one chunk of rows."""
        m = mask.to(tuned_logprobs.dtype)
        self.dp += torch.einsum("rp,rpv->v", m, tuned_logprobs.exp() - base_logprobs.exp()).double().cpu()
        self.dlp += torch.einsum("rp,rpv->v", m, tuned_logprobs - base_logprobs).double().cpu()
        changed = mask.bool() & (base_top1 != tuned_top1)
        self.gained += torch.bincount(tuned_top1[changed].cpu(), minlength=self.d_vocab)[: self.d_vocab]
        self.lost += torch.bincount(base_top1[changed].cpu(), minlength=self.d_vocab)[: self.d_vocab]
        self.n += int(mask.sum())

    def add_sums(self, delta_prob_sum: Float[Tensor, " d_vocab"], delta_logprob_sum: Float[Tensor, " d_vocab"],
                 base_top1: Int[Tensor, " n"], tuned_top1: Int[Tensor, " n"]) -> None:
        """Add sums already taken over ``n`` real positions (what :func:`probes.diff.corpus.diff_corpus` does, sharing
        the ``exp`` of the log-probabilities with the KL) and those positions' top-1 tokens."""
        self.dp += delta_prob_sum.double().cpu()
        self.dlp += delta_logprob_sum.double().cpu()
        changed = base_top1 != tuned_top1
        self.gained += torch.bincount(tuned_top1[changed].cpu(), minlength=self.d_vocab)[: self.d_vocab]
        self.lost += torch.bincount(base_top1[changed].cpu(), minlength=self.d_vocab)[: self.d_vocab]
        self.n += int(base_top1.numel())

    def means(self) -> tuple[Tensor, Tensor]:
        """``(mean_delta_prob, mean_delta_logprob)``, each ``Float[Tensor, " d_vocab"]``."""
        n = max(self.n, 1)
        return self.dp / n, self.dlp / n

    def result(self, top_k: int, decode: Any = None) -> dict[str, Any]:
        """The ``top_k`` tokens that rise / fall most by each statistic, as ``{"id", "token", "value"}`` rows
        (``top_k``: the caller's setting, :class:`~probes.diff.corpus.DiffSettings` ``top_k_tokens``)."""
        dp, dlp = self.means()
        dec = decode or str

        def rows(values: Tensor, largest: bool) -> list[dict[str, Any]]:
            k = min(top_k, values.numel())
            v, i = torch.topk(values, k, largest=largest)
            return [{"id": int(t), "token": dec(int(t)), "value": float(x)} for x, t in zip(v, i)]

        return {
            "n_positions": self.n,
            "statistics": {"mean_delta_prob": "mean over real positions of p_tuned(v) − p_base(v)",
                           "mean_delta_logprob": "mean over real positions of log p_tuned(v) − log p_base(v) (nats)",
                           "top1_gained": "positions where v becomes the top-1 prediction"},
            "rising_by_prob": rows(dp, True), "falling_by_prob": rows(dp, False),
            "rising_by_logprob": rows(dlp, True), "falling_by_logprob": rows(dlp, False),
            "top1_gained": [r for r in rows(self.gained.double(), True) if r["value"] > 0],
            "top1_lost": [r for r in rows(self.lost.double(), True) if r["value"] > 0],
            "n_top1_changed": int(self.gained.sum()),
        }
