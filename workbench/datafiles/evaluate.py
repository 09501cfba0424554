"""Held-out metrics of a model on your examples: answer loss, perplexity, exact match (teacher forced).

``answer_loss`` is the mean negative log-likelihood per answer token (nats), over every answer token the loss
counts (``answer_mask`` honoured) of every example; ``perplexity = exp(answer_loss)``. ``exact_match`` is the
share of examples whose every counted answer token is the argmax of the previous position's logits under
teacher forcing -- the same as greedy decoding reproducing the completion token for token (for a chat: every
assistant turn, given the true earlier turns). Plain-text data has no completion, so no exact match.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.data import IGNORE_INDEX, Example, check_examples, collate, vocab_size_of
from workbench.losses import answer_logits

__all__ = ["evaluate_examples"]


@torch.no_grad()
def evaluate_examples(model: nn.Module, examples: Sequence[Example], *, pad_id: int = 0, batch_size: int = 4,
                      exact_match: bool = True, progress: bool = True, desc: str = "eval") -> dict[str, Any]:
    """Answer loss, perplexity and (with ``exact_match``) exact match of ``model`` as it is now (hooks included).

    One forward pass per batch of ``batch_size`` examples (right-padded, on the model's device; the unembedding only at
    the positions that predict answer tokens, :func:`workbench.losses.answer_logits`); a tqdm bar unless ``progress`` is
    False.

    Returns:
        ``{"answer_loss": float (nats/token), "perplexity": float, "exact_match": float in [0, 1] or None,
        "n_examples": int, "n_answer_tokens": int}``.

    Raises:
        ConfigError: ``examples`` not a non-empty list of Example in the model's vocabulary, or a bad batch size.
    """
    from workbench.errors import ConfigError

    check_examples(examples, vocab_size_of(model))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, n_tokens, hits = 0.0, 0, 0
    try:
        starts = range(0, len(examples), batch_size)
        for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
            ids, mask, labels = (t.to(device) for t in collate(examples[start : start + batch_size], pad_id))
            logits, target = answer_logits(model, ids, mask, labels)  # only the positions that predict answer tokens
            logits = logits.float()
            keep = target != IGNORE_INDEX
            token_nll = nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
            nll += float(token_nll[keep].sum())
            n_tokens += int(keep.sum())
            hits += int(((logits.argmax(-1) == target) | ~keep).all(-1).sum())
    finally:
        model.train(was_training)
    loss = nll / n_tokens
    return {"answer_loss": loss, "perplexity": math.exp(min(loss, 700.0)),
            "exact_match": hits / len(examples) if exact_match else None, "n_examples": len(examples), "n_answer_tokens": n_tokens}
