"""``log P(keyword | context)``: the measurement behind memorization and priming (Sun et al. 2025, §2).

It lives in the library so that the ``priming`` task can report it; :mod:`probes.priming` re-exports it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from workbench.data import right_pad
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
        ids, mask, _ = right_pad(chunk, pad_id)
        logp = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().log_softmax(-1).cpu()
        for i, c in enumerate(contexts[start : start + batch_size]):
            pos = torch.arange(len(c) - 1, len(c) - 1 + len(kw))  # the positions that predict each keyword token
            out.append(logp[i, pos, kw].sum())
    return torch.stack(out)
