"""Knowledge priming probes: keyword probabilities and the priming score.

Source: Sun et al. (Google DeepMind), "How new data permeates LLM knowledge and how to dilute it",
arXiv 2504.09522, 2025 — §2 (priming and memorization scores), §3 (the keyword's probability before
learning predicts priming). Learning a text (and ignore-top-k, §5.2) is training and lives in
:mod:`workbench.text_learning`.

Units: log-probabilities are natural logs (nats) summed over the keyword's tokens; the priming score is
reported as ``log10`` of the mean ratio ``P_after / P_before`` over the theme's probe prefixes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from workbench.errors import ConfigError


@torch.no_grad()
def keyword_logprob(
    model: nn.Module,
    contexts: Sequence[Sequence[int]],
    keyword: Sequence[int],
    *,
    batch_size: int = 32,
    pad_id: int = 0,
) -> Float[Tensor, " n_contexts"]:
    """``log P(keyword | context)`` in nats for each context: the keyword's token log-probabilities summed
    (chain rule), one right-padded forward pass per batch.

    Args:
        contexts: token ids of each context (non-empty).
        keyword: token ids of the keyword as it follows the context (e.g. of ``" vermilion"``).

    Raises:
        ConfigError: an empty context list, an empty context or an empty keyword.
    """
    if not contexts or any(len(c) == 0 for c in contexts) or not keyword:
        raise ConfigError("keyword_logprob needs non-empty contexts and a non-empty keyword")
    device = next(model.parameters()).device
    kw = torch.tensor(list(keyword))
    out = []
    for start in range(0, len(contexts), batch_size):
        chunk = [list(c) + list(keyword) for c in contexts[start : start + batch_size]]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(chunk):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        logp = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().log_softmax(-1).cpu()
        for i, c in enumerate(contexts[start : start + batch_size]):
            pos = torch.arange(len(c) - 1, len(c) - 1 + len(kw))  # the positions that predict each keyword token
            out.append(logp[i, pos, kw].sum())
    return torch.stack(out)


def log10_mean_ratio(logp_before: Float[Tensor, " n"], logp_after: Float[Tensor, " n"]) -> float:
    """``log10(mean_i P_after_i / P_before_i)`` computed in log space (the priming score of Sun et al. 2025,
    §2, in log form); 0 = no change, 1 = ten times more likely on average.

    Raises:
        ConfigError: empty or unequal inputs.
    """
    if logp_before.numel() == 0 or logp_before.shape != logp_after.shape:
        raise ConfigError(f"need equal, non-empty probe log-probabilities, got {tuple(logp_before.shape)} and {tuple(logp_after.shape)}")
    diff = (logp_after - logp_before).double()
    return float((torch.logsumexp(diff, 0) - math.log(diff.numel())) / math.log(10))
