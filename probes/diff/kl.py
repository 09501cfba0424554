"""Per-token KL(P_tuned ‖ P_base) over a corpus, and the positions where it is largest, shown in their context
(a max-activating-example view, as dataset-level diffing tools show latents: the top-k (row, position) pairs
with a window of the surrounding tokens).

Source: the standard model-diffing measure (METHODS.md, "Dataset-level model diffing"); the context view
follows the max-activating-example displays of Bricken et al. 2023 ("Towards Monosemanticity", §"Feature
visualization").
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from probes.diff.stats import RowMean, StreamingTopK, TokenMean


def token_kl(tuned_logprobs: Float[Tensor, "*rows d_vocab"], base_logprobs: Float[Tensor, "*rows d_vocab"]) -> Float[Tensor, "*rows"]:
    """KL(P_tuned ‖ P_base) = Σ_v p_tuned(v) (log p_tuned(v) − log p_base(v)) in nats, from log-probabilities
    (``log_softmax`` of the logits); clamped at 0 against rounding."""
    return (tuned_logprobs.exp() * (tuned_logprobs - base_logprobs)).sum(-1).clamp_min(0.0)


class KLStats:
    """Running per-token KL over a corpus: token-weighted mean, per-row mean with a 95% CI over rows, mean by
    position, a histogram, and the ``top_k`` largest (row, position) pairs with their context.

    Args (keywords; :class:`~probes.diff.corpus.DiffSettings` owns the first three's defaults):
        top_k: how many top-KL positions to keep (memory O(top_k · window)).
        window: tokens of context kept on each side of a top position.
        max_positions: length of the mean-by-position curve (positions past it are left out of that curve only).
        bins: upper edges (nats) of the histogram bins; the last bin is open.
    """

    def __init__(self, *, top_k: int, window: int, max_positions: int,
                 bins: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0, 3.0)) -> None:
        self.top = StreamingTopK(top_k)
        self.window = int(window)
        self.rows = RowMean()
        self.tokens = TokenMean()
        self.by_pos = TokenMean(torch.zeros(max_positions, dtype=torch.float64), torch.zeros(max_positions, dtype=torch.float64))
        self.max_positions = int(max_positions)
        self.bins = torch.tensor(bins, dtype=torch.float64)
        self.hist = torch.zeros(len(bins) + 1, dtype=torch.long)
        self.max_kl = 0.0

    @torch.no_grad()
    def update(self, kl: Float[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"], input_ids: Int[Tensor, "batch pos"],
               row_offset: int, base_top1: Int[Tensor, "batch pos"], tuned_top1: Int[Tensor, "batch pos"],
               base_p_next: Float[Tensor, "batch pos"] | None = None, tuned_p_next: Float[Tensor, "batch pos"] | None = None) -> None:
        """Add one batch. ``kl`` in nats; ``mask`` marks real tokens; ``row_offset`` is the corpus index of the
        batch's first row; ``*_top1`` are each model's argmax next token; ``*_p_next`` (optional) each model's
        probability of the true next token."""
        kl, mask = kl.detach().double().cpu(), mask.bool().cpu()
        ids = input_ids.cpu()
        masked = torch.where(mask, kl, torch.zeros_like(kl))
        n_tok = mask.sum(1)
        keep = n_tok > 0
        self.rows.add(masked.sum(1)[keep] / n_tok[keep])
        self.tokens.add(masked.sum(), mask.sum())
        t = min(kl.shape[1], self.max_positions)
        self.by_pos.total[:t] += masked[:, :t].sum(0)
        self.by_pos.count[:t] += mask[:, :t].sum(0).double()
        vals = kl[mask]
        if vals.numel():
            self.hist += torch.bincount(torch.bucketize(vals, self.bins), minlength=len(self.hist))
            self.max_kl = max(self.max_kl, float(vals.max()))
        # candidates: the batch's own top-k, in (row, pos) order for equal keys (stable: earliest first)
        flat = torch.where(mask, kl, torch.full_like(kl, -1.0)).flatten()
        k = min(self.top.k, int(mask.sum()))
        if k == 0:
            return
        cand = torch.topk(flat, k).indices.sort().values
        for idx in cand.tolist():
            r, p = divmod(idx, kl.shape[1])
            value = float(kl[r, p])
            if value <= self.top.threshold():
                continue
            n = int(n_tok[r])
            lo, hi = max(0, p - self.window), min(n, p + 1 + self.window)
            self.top.push(value, {
                "row": row_offset + r, "pos": p, "left": ids[r, lo:p].tolist(), "token": int(ids[r, p]),
                "right": ids[r, p + 1:hi].tolist(), "base_top1": int(base_top1[r, p]), "tuned_top1": int(tuned_top1[r, p]),
                **({"base_p_next": float(base_p_next[r, p]), "tuned_p_next": float(tuned_p_next[r, p])}
                   if base_p_next is not None and p + 1 < n else {}),
            })

    def result(self, decode: Any = None) -> dict[str, Any]:
        """JSON-ready summary; with ``decode`` (token id -> text) the contexts carry their text too."""
        by_pos_n = self.by_pos.count
        last = int((by_pos_n > 0).nonzero().max()) + 1 if bool((by_pos_n > 0).any()) else 0
        top = []
        for value, item in self.top.items():
            row = {"kl": value, **item}
            if decode is not None:
                row.update({"left_text": [decode(i) for i in item["left"]], "token_text": decode(item["token"]),
                            "right_text": [decode(i) for i in item["right"]], "base_top1_text": decode(item["base_top1"]),
                            "tuned_top1_text": decode(item["tuned_top1"])})
            top.append(row)
        return {
            "mean_per_token": self.tokens.mean(), "n_tokens": int(self.tokens.count),
            "per_row": self.rows.result(), "max": self.max_kl,
            "by_position": {"mean": (self.by_pos.total[:last] / by_pos_n[:last].clamp_min(1)).tolist(),
                            "n_tokens": by_pos_n[:last].long().tolist()},
            "histogram": {"upper_edges_nats": self.bins.tolist() + [float("inf")], "counts": self.hist.tolist()},
            "top": top,
        }
