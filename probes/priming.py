"""Knowledge priming probes: the priming score.

Source: Sun et al. (Google DeepMind), "How new data permeates LLM knowledge and how to dilute it",
arXiv 2504.09522, 2025 — §2 (priming and memorization scores), §3 (the keyword's probability before
learning predicts priming). A keyword's log-probability after a prefix is
:func:`workbench.tasks.priming.logprob.keyword_logprob` (the library's priming task reports it too). Learning a
text (and ignore-top-k, §5.2) is training and lives in :mod:`workbench.text_learning`.

Units: log-probabilities are natural logs (nats) summed over the keyword's tokens; the priming score is
reported as ``log10`` of the mean ratio ``P_after / P_before`` over the theme's probe prefixes.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from workbench.errors import ConfigError


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
