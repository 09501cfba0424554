"""The training losses of :func:`workbench.train.fit`: answer-only cross-entropy (SFT) and DPO, computed from only the
logits that predict answer tokens when the model allows it (:func:`answer_logits`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from workbench.data import Example, collate, takes_logits_to_keep


def answer_loss(logits: Float[Tensor, "batch pos d_vocab"], labels: Int[Tensor, "batch pos"]) -> Tensor:
    """Mean cross-entropy (nats) of the answer tokens only: position t-1 predicts label t."""
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def answer_logprob(logits: Float[Tensor, "batch pos d_vocab"], labels: Int[Tensor, "batch pos"]) -> Float[Tensor, " batch"]:
    """Summed log-probability (nats) of each row's answer tokens."""
    return target_logprob(logits[:, :-1], labels[:, 1:])


def target_logprob(logits: Float[Tensor, "batch k d_vocab"], target: Int[Tensor, "batch k"]) -> Float[Tensor, " batch"]:
    """Summed log-probability (nats) of each row's ``target`` tokens under ``logits`` at the same positions (−100: not
    counted); with :func:`answer_logits`' output, each row's answer log-probability."""
    logp = logits.float().log_softmax(-1)
    picked = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (picked * (target != -100)).sum(-1)


def answer_logits(model: nn.Module, ids: Int[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"],
                  labels: Int[Tensor, "batch pos"]) -> tuple[Float[Tensor, "batch k d_vocab"], Int[Tensor, "batch k"]]:
    """The logits that predict answer tokens, and those tokens: ``(logits, target)`` over the ``k`` positions ``t − 1``
    where some row has an answer token at ``t`` (``target`` is −100 where a row has none there).

    When the model takes ``logits_to_keep`` (Hugging Face causal LMs), only those ``k`` positions go through the
    unembedding and, in training, its backward: with short answers (one token after a 30-token prompt) that drops the
    ``d_model × d_vocab`` readout of every other position, about a fifth of a SmolLM2 step. Every loss over answer tokens
    is unchanged (the other positions carried label −100); otherwise all positions are computed and shifted.
    """
    target = labels[:, 1:]
    if takes_logits_to_keep(model):
        keep = (target != -100).any(0).nonzero().squeeze(-1)
        return model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits, target[:, keep]
    return model(input_ids=ids, attention_mask=mask).logits[:, :-1], target


def sft_loss(model: nn.Module, ids: Int[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"], labels: Int[Tensor, "batch pos"],
             reduction: str = "mean") -> Tensor:
    """Cross-entropy (nats) of the answer tokens, mean over them (or their sum), computing only the logits that predict
    them (:func:`answer_logits`): the same value as :func:`answer_loss` on the full logits."""
    logits, target = answer_logits(model, ids, mask, labels)
    return nn.functional.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=-100, reduction=reduction)


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float,
             reduction: str = "mean") -> Tensor:
    """DPO loss, −log σ(β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]), batch mean (or sum).

    Source: Rafailov et al., "Direct Preference Optimization", NeurIPS 2023, Eq. 7. LoFiT uses it with
    β = 0.5 for TruthfulQA (Yin et al. 2024, §4); the reference is the untouched base model.
    """
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    losses = -nn.functional.logsigmoid(beta * margin)
    return losses.sum() if reduction == "sum" else losses.mean()


def preference_pairs(examples: Sequence[Example]) -> tuple[list[Example], list[Example]]:
    """The chosen and the rejected answers of preference examples, as two lists of plain examples (same prompts)."""
    chosen = list(examples)
    rejected = [Example(e.prompt_ids, e.rejected_ids) for e in examples]
    return chosen, rejected


@torch.no_grad()
def reference_logprobs(model: nn.Module, examples: Sequence[Example], pad_id: int, batch_size: int = 16) -> Tensor:
    """``[n_examples, 2]`` summed log-probs of (chosen, rejected) answers under ``model`` as it is now."""
    device = next(model.parameters()).device
    chosen, rejected = preference_pairs(examples)
    out = []
    for start in range(0, len(examples), batch_size):
        cols = []
        for part in (chosen, rejected):
            ids, mask, labels = (t.to(device) for t in collate(part[start : start + batch_size], pad_id))
            cols.append(target_logprob(*answer_logits(model, ids, mask, labels)))
        out.append(torch.stack(cols, -1).cpu())
    return torch.cat(out)
