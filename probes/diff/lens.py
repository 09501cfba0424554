"""Logit-lens agreement per layer, for each model of a pair: how early does each model settle on its answer?

For layer l and a position, the logit lens reads ``readout(resid_post_l)`` (final norm, unembedding, soft-cap:
:func:`workbench.architecture.readout`). Statistics over the positions read:

* ``top1_agreement[l]``: share of positions where the lens top-1 equals the model's own final top-1;
* ``kl_to_final[l]``: mean KL(P_final ‖ P_lens,l) in nats.

Source: nostalgebraist 2020, "interpreting GPT: the logit lens"; Belrose et al. 2023 (arXiv 2303.08112), §2.
The last layer reads the model's own logits (agreement 1, KL 0 up to rounding): a built-in check.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from probes.diff.stats import TokenMean
from workbench.architecture import readout


@torch.no_grad()
def lens_agreement(model: nn.Module, resids: Float[Tensor, "n_layers n d_model"], final_logits: Float[Tensor, "n d_vocab"],
                   chunk_rows: int = 2048) -> tuple[Float[Tensor, " n_layers"], Float[Tensor, " n_layers"]]:
    """Per layer, the number of the ``n`` positions whose lens top-1 equals the final top-1, and the summed
    KL(P_final ‖ P_lens) in nats (sums, so batches add up).

    All layers go through the unembedding together (``chunk_rows`` (layer, position) rows per product): the
    ``d_model × d_vocab`` weight is read once per chunk, not once per layer, which is what makes a small lens
    sample cheap on a CPU.

    Raises:
        ConfigError: the model has no final norm or unembedding (:func:`workbench.architecture.readout`).
    """
    n_layers, n = resids.shape[:2]
    final = final_logits.float().log_softmax(-1)
    top = final.argmax(-1)
    flat = resids.reshape(n_layers * n, -1)
    agree = torch.zeros(n_layers * n, dtype=torch.float64)
    kl = torch.zeros(n_layers * n, dtype=torch.float64)
    for c in range(0, flat.shape[0], chunk_rows):
        rows = torch.arange(c, min(c + chunk_rows, flat.shape[0]))
        pos = (rows % n).to(final.device)
        lens = readout(model, flat[c:c + chunk_rows]).float().log_softmax(-1)
        f = final[pos]
        agree[c:c + len(rows)] = (lens.argmax(-1) == top[pos]).double().cpu()
        kl[c:c + len(rows)] = (f.exp() * (f - lens)).sum(-1).clamp_min(0).double().cpu()
    return agree.view(n_layers, n).sum(1), kl.view(n_layers, n).sum(1)


class LensStats:
    """Running logit-lens agreement of one model (memory O(n_layers))."""

    def __init__(self, n_layers: int) -> None:
        self.agree = TokenMean(torch.zeros(n_layers, dtype=torch.float64), 0.0)
        self.kl = TokenMean(torch.zeros(n_layers, dtype=torch.float64), 0.0)

    def update(self, model: nn.Module, resids: Tensor, final_logits: Tensor) -> None:
        if resids.shape[1] == 0:
            return
        a, k = lens_agreement(model, resids, final_logits)
        self.agree.add(a.cpu(), resids.shape[1])
        self.kl.add(k.cpu(), resids.shape[1])

    def result(self) -> dict[str, Any]:
        return {"top1_agreement": self.agree.mean() if self.agree.count else [],
                "kl_to_final": self.kl.mean() if self.kl.count else [], "n_positions": int(self.agree.count)}
