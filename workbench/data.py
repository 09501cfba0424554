"""The one data layer: :class:`Example`, right-padding, :func:`collate` and final-position logits.

Every batch in the workbench is *right*-padded (real tokens first, then ``pad_id``; mask 1 on real
tokens), so position ``t`` of a row is the same position it has in the unpadded sequence and causal
attention never sees the padding. Code that batches token lists calls :func:`right_pad`; code that
needs each row's next-token logits calls :func:`final_position_logits`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from workbench.errors import ConfigError

IGNORE_INDEX = -100  # label of positions the loss skips (torch's cross_entropy default ignore_index)


@dataclass(frozen=True)
class Example:
    """One supervised example: prompt token ids and the answer token ids the loss is taken on.

    ``rejected_ids`` (a dispreferred answer) is needed only for the DPO loss.
    """

    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...] | None = None


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Int[Tensor, " batch"]]:
    """Right-pad token lists into ``(input_ids, attention_mask, last_index)``.

    ``input_ids[i, :len(seqs[i])] == seqs[i]``, the rest is ``pad_id``; ``attention_mask`` is 1 on real
    tokens; ``last_index[i] = len(seqs[i]) - 1`` (row ``i``'s last real token). All ``torch.long``, CPU.

    Raises:
        ConfigError: no sequences, or an empty one.
    """
    if len(seqs) == 0 or any(len(s) == 0 for s in seqs):
        raise ConfigError("right_pad needs at least one sequence and no empty sequence")
    rows = [torch.as_tensor(list(s), dtype=torch.long) for s in seqs]
    lengths = torch.tensor([len(r) for r in rows])
    ids = pad_sequence(rows, batch_first=True, padding_value=pad_id)
    mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
    return ids, mask, lengths - 1


def collate(examples: Sequence[Example], pad_id: int) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Right-pad prompt+answer into ``(input_ids, attention_mask, labels)``.

    ``labels`` equal ``input_ids`` on each row's answer tokens and are ``-100`` elsewhere (prompt and
    padding), so the loss is taken on the answer only.

    Raises:
        ConfigError: no examples, or one whose prompt and answer are both empty.
    """
    ids, mask, _ = right_pad([tuple(e.prompt_ids) + tuple(e.answer_ids) for e in examples], pad_id)
    prompt_len = torch.tensor([len(e.prompt_ids) for e in examples])
    is_answer = (torch.arange(ids.shape[1]) >= prompt_len[:, None]) & mask.bool()
    return ids, mask, ids.masked_fill(~is_answer, IGNORE_INDEX)


def last_index(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, " batch"]:
    """Index of each row's last real token (the last 1 in ``attention_mask``; right or left padding).

    Raises:
        ConfigError: a mask that is not 2-D, or a row without a real token.
    """
    if attention_mask.ndim != 2:
        raise ConfigError(f"attention_mask must be [batch, pos], got shape {tuple(attention_mask.shape)}")
    real = attention_mask != 0
    if not bool(real.any(-1).all()):
        raise ConfigError("attention_mask has a row with no real token")
    pos = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (pos * real).amax(-1)


def _takes_logits_to_keep(model: nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def final_position_logits(model: nn.Module, input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"],
                          last: Int[Tensor, " batch"] | None = None) -> Float[Tensor, "batch d_vocab"]:
    """Each row's logits at its last real token: the next-token prediction of every prompt in a padded batch.

    Runs one forward pass (on the model's device, gradients as the caller has them). Only the needed
    positions go through the unembedding when the model takes ``logits_to_keep`` (an index tensor);
    otherwise the full logits are computed and the rows' positions gathered.

    Args:
        last: each row's last real position (``right_pad``'s third output); ``None`` = from ``attention_mask``.

    Raises:
        ConfigError: mismatched shapes, or a row without a real token.
    """
    if input_ids.shape != attention_mask.shape:
        raise ConfigError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ in shape")
    last = last_index(attention_mask) if last is None else last
    if last.shape != input_ids.shape[:1]:
        raise ConfigError(f"last has shape {tuple(last.shape)}, expected ({input_ids.shape[0]},)")
    device = next(model.parameters()).device
    kw = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
    rows = torch.arange(len(last), device=device)
    if _takes_logits_to_keep(model):
        keep = torch.unique(last.cpu())  # sorted; logits come back at these positions only
        logits = model(**kw, logits_to_keep=keep.to(device)).logits
        return logits[rows, torch.searchsorted(keep, last.cpu()).to(device)]
    return model(**kw).logits[rows, last.to(device)]
