"""Held-out metrics of a model on your examples: answer loss, perplexity, exact match (teacher forced).

``answer_loss`` is the mean negative log-likelihood per answer token (nats), over every answer token the loss
counts (``answer_mask`` honoured) of every example; ``perplexity = exp(answer_loss)``.

Exact match is the share of examples whose answer tokens are each the argmax of the previous position's logits
under teacher forcing -- the same as greedy decoding reproducing the completion token for token (for a chat: every
assistant turn, given the true earlier turns). Two numbers, because a prompt/completion answer ends with the
end-of-sequence token (:mod:`workbench.datafiles.examples`), and a model that gives every answer right but goes on
talking after it would otherwise score 0:

* ``exact_match_answer`` -- every counted answer token *except* those equal to an id in ``eos_ids`` (the answer
  itself);
* ``exact_match_answer_eos`` -- every counted answer token, EOS included (the answer, then stop).

Both are equal when no answer holds an ``eos_ids`` token. Plain-text data has no completion, so no exact match.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.data import IGNORE_INDEX, Example, check_examples, collate, vocab_size_of
from workbench.losses import answer_logits

__all__ = ["evaluate_examples"]


@torch.no_grad()
def evaluate_examples(model: nn.Module, examples: Sequence[Example], *, pad_id: int = 0, batch_size: int = 4,
                      exact_match: bool = True, eos_ids: Collection[int] = (), progress: bool = True,
                      desc: str = "eval") -> dict[str, Any]:
    """Answer loss, perplexity and (with ``exact_match``) both exact matches of ``model`` as it is now (hooks included).

    One forward pass per batch of ``batch_size`` examples (right-padded, on the model's device; the unembedding only at
    the positions that predict answer tokens, :func:`workbench.losses.answer_logits`); a tqdm bar unless ``progress`` is
    False. ``eos_ids``: the end-of-sequence token id(s) (``tokenizer.eos_token_id``) that ``exact_match_answer``
    leaves out (module docstring).

    Returns:
        ``{"answer_loss": float (nats/token), "perplexity": float, "exact_match_answer": float in [0, 1] or None,
        "exact_match_answer_eos": float in [0, 1] or None, "n_examples": int, "n_answer_tokens": int}`` (the exact
        matches are None without ``exact_match``).

    Raises:
        ConfigError: ``examples`` not a non-empty list of Example in the model's vocabulary, a bad batch size, or
            ``eos_ids`` not a collection of int token ids.
    """
    from workbench.errors import ConfigError

    check_examples(examples, vocab_size_of(model))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if eos_ids is None or isinstance(eos_ids, (str, bytes, int)) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in eos_ids):
        raise ConfigError(f"eos_ids must be a collection of int token ids >= 0 (e.g. [tokenizer.eos_token_id]), got {eos_ids!r}")
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, n_tokens, hits, hits_eos = 0.0, 0, 0, 0
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
            right = (logits.argmax(-1) == target) | ~keep
            hits_eos += int(right.all(-1).sum())
            hits += int((right | torch.isin(target, eos.to(target.device))).all(-1).sum())
    finally:
        model.train(was_training)
    loss = nll / n_tokens
    return {"answer_loss": loss, "perplexity": math.exp(min(loss, 700.0)),
            "exact_match_answer": hits / len(examples) if exact_match else None,
            "exact_match_answer_eos": hits_eos / len(examples) if exact_match else None,
            "n_examples": len(examples), "n_answer_tokens": n_tokens}
