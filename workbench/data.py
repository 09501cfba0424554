"""The one data layer: :class:`Example`, right-padding, :func:`collate` and final-position logits.

Your own files (JSONL / JSON / CSV / Parquet, or a hub dataset) are read by :mod:`workbench.datafiles` (``load_rows``,
``to_examples``, ``corpus_texts``), which builds on this module.

Every batch in the workbench is *right*-padded (real tokens first, then ``pad_id``; mask 1 on real
tokens), so position ``t`` of a row is the same position it has in the unpadded sequence and causal
attention never sees the padding. Code that batches token lists calls :func:`right_pad`; code that
needs each row's next-token logits calls :func:`final_position_logits`.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from workbench.errors import ConfigError

IGNORE_INDEX = -100  # label of positions the loss skips (torch's cross_entropy default ignore_index)

@dataclass(frozen=True)
class Example:
    """One supervised example: prompt token ids and the answer token ids the loss is taken on.

    ``rejected_ids`` (a dispreferred answer) is needed only for the DPO loss. ``answer_mask`` (one 0/1 per
    answer token, ``len(answer_mask) == len(answer_ids)``) limits the loss to the answer tokens marked 1, e.g.
    the assistant turns of a chat whose user turns sit between them; ``None`` = every answer token.
    """

    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...] | None = None
    answer_mask: tuple[int, ...] | None = None


_SHAPE = {1: "[batch]", 2: "[batch, pos]"}


def as_token_ids(x: Any, name: str = "input_ids", *, ndim: int = 2, vocab_size: int | None = None) -> Tensor:
    """``x`` as a ``torch.long`` tensor of token ids with ``ndim`` axes (2: ``[batch, pos]``, 1: ``[batch]``).

    The one input check of every public function that takes token ids. Accepts an integer tensor (kept on its
    device), a numpy array, or nested lists / tuples of ints (``[[1, 2, 3], [4, 5, 6]]``).

    Raises:
        ConfigError: naming ``name``: not token ids (None, a str, floats, bools), ragged rows, another number
            of axes, an empty batch or row, a negative id, or an id ``>= vocab_size`` when that is given.
    """
    shape = _SHAPE.get(ndim, f"{ndim}-D")
    if x is None or isinstance(x, (str, bytes)):
        raise ConfigError(f"{name} must be token ids {shape}, got {type(x).__name__}; tokenize text first")
    if isinstance(x, Tensor):
        t = x
    else:
        try:
            t = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise ConfigError(f"{name} must be a rectangular {shape} of int token ids (rows of equal length; "
                              f"right_pad pads ragged rows): cannot convert the {type(x).__name__} ({exc})") from exc
    if t.ndim != ndim:
        hint = " (one prompt? wrap it: [ids])" if t.ndim == ndim - 1 else ""
        raise ConfigError(f"{name} must have {ndim} axes {shape}, got shape {tuple(t.shape)}{hint}")
    if t.numel() == 0:
        raise ConfigError(f"{name} is empty (shape {tuple(t.shape)}): need at least one prompt and one token")
    if t.dtype == torch.bool or t.dtype.is_floating_point or t.dtype.is_complex:
        raise ConfigError(f"{name} must hold integer token ids, got dtype {t.dtype}")
    t = t.long()
    if bool((t < 0).any()):
        raise ConfigError(f"{name} holds a negative token id ({int(t.min())}); padding must use a real id (pad_id)")
    if vocab_size is not None and bool((t >= vocab_size).any()):
        raise ConfigError(f"{name} holds token id {int(t.max())}, outside the vocabulary of {vocab_size} tokens "
                          "(ids from another tokenizer?)")
    return t


def check_examples(examples: Any, vocab_size: int | None = None, name: str = "examples") -> None:
    """Raises ConfigError unless ``examples`` is a non-empty sequence of :class:`Example` whose ids are token ids
    (``< vocab_size`` when given); the message names the first bad example."""
    if isinstance(examples, (str, bytes, Example)) or not isinstance(examples, Sequence) or len(examples) == 0:
        raise ConfigError(f"{name} must be a non-empty list of workbench.data.Example (at least one training example), got {type(examples).__name__}"
                          + (f" of length {len(examples)}" if isinstance(examples, Sequence) else ""))
    for i, ex in enumerate(examples):
        if not isinstance(ex, Example):
            raise ConfigError(f"{name}[{i}] is a {type(ex).__name__}, not an Example(prompt_ids, answer_ids)")
        ids = tuple(ex.prompt_ids) + tuple(ex.answer_ids) + tuple(ex.rejected_ids or ())
        if not ids:
            raise ConfigError(f"{name}[{i}] has neither prompt nor answer tokens")
        as_token_ids(ids, f"{name}[{i}] ids", ndim=1, vocab_size=vocab_size)
        if ex.answer_mask is not None:
            mask = tuple(ex.answer_mask)
            if len(mask) != len(ex.answer_ids) or any(m not in (0, 1) or isinstance(m, float) for m in mask):
                raise ConfigError(f"{name}[{i}].answer_mask must hold one 0 or 1 per answer token ({len(ex.answer_ids)}), "
                                  f"got {len(mask)} value(s)")
            if not any(mask):
                raise ConfigError(f"{name}[{i}].answer_mask marks no answer token (all 0): nothing to train on")


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Int[Tensor, " batch"]]:
    """Right-pad token lists into ``(input_ids, attention_mask, last_index)``.

    ``input_ids[i, :len(seqs[i])] == seqs[i]``, the rest is ``pad_id``; ``attention_mask`` is 1 on real
    tokens; ``last_index[i] = len(seqs[i]) - 1`` (row ``i``'s last real token). All ``torch.long``, CPU.

    Raises:
        ConfigError: no sequences, or an empty one.
    """
    if isinstance(seqs, (str, bytes)) or len(seqs) == 0 or any(
            isinstance(s, (str, bytes)) or not hasattr(s, "__len__") or len(s) == 0 for s in seqs):
        raise ConfigError("right_pad needs at least one sequence and no empty sequence (a list of token-id "
                          "lists; one prompt? wrap it: [ids])")
    rows = [as_token_ids(s, f"sequence {i}", ndim=1).cpu() for i, s in enumerate(seqs)]
    lengths = torch.tensor([len(r) for r in rows])
    ids = pad_sequence(rows, batch_first=True, padding_value=pad_id)
    mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
    return ids, mask, lengths - 1


def collate(examples: Sequence[Example], pad_id: int) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Right-pad prompt+answer into ``(input_ids, attention_mask, labels)``.

    ``labels`` equal ``input_ids`` on each row's answer tokens and are ``-100`` elsewhere (prompt and
    padding), so the loss is taken on the answer only; an example's ``answer_mask`` (when set) also sets
    ``-100`` on its answer tokens marked 0.

    Raises:
        ConfigError: no examples, one whose prompt and answer are both empty, or an ``answer_mask`` whose
            length differs from its answer's.
    """
    ids, mask, _ = right_pad([tuple(e.prompt_ids) + tuple(e.answer_ids) for e in examples], pad_id)
    prompt_len = torch.tensor([len(e.prompt_ids) for e in examples])
    is_answer = (torch.arange(ids.shape[1]) >= prompt_len[:, None]) & mask.bool()
    for row, e in enumerate(examples):
        if e.answer_mask is not None:
            if len(e.answer_mask) != len(e.answer_ids):
                raise ConfigError(f"examples[{row}].answer_mask has {len(e.answer_mask)} values for {len(e.answer_ids)} answer tokens")
            start = len(e.prompt_ids)
            is_answer[row, start : start + len(e.answer_ids)] &= torch.tensor(e.answer_mask, dtype=torch.bool)
    return ids, mask, ids.masked_fill(~is_answer, IGNORE_INDEX)


def last_index(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, " batch"]:
    """Index of each row's last real token (the last 1 in ``attention_mask``; right or left padding).

    Raises:
        ConfigError: a mask that is not 2-D, or a row without a real token.
    """
    attention_mask = as_attention_mask(attention_mask)
    real = attention_mask != 0
    if not bool(real.any(-1).all()):
        raise ConfigError("attention_mask has a row with no real token")
    pos = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (pos * real).amax(-1)


def vocab_size_of(model: nn.Module) -> int | None:
    """Rows of ``model``'s input embedding (the ids it can take), or ``None`` when it has none to ask."""
    try:
        return int(model.get_input_embeddings().num_embeddings)
    except (AttributeError, TypeError, NotImplementedError):
        return None


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tok: Any) -> str:
    """``sha256:…`` over what decides how text becomes ids: the vocabulary (token → id, added tokens included) and a
    fast BPE tokenizer's merges. Which token plays EOS / PAD and the chat template are left out: fine-tunes change
    them without changing any id. ``""`` when ``tok`` has no vocabulary to read. Remembered per tokenizer object
    (and size, so added tokens count): ~0.5 s for a 49k-token BPE."""
    try:
        vocab = tok.get_vocab()
    except (AttributeError, TypeError, NotImplementedError):
        return ""
    with contextlib.suppress(TypeError):  # an unhashable / non-weakref-able tokenizer is just not remembered
        known = _FINGERPRINTS.get(tok)
        if known is not None and known[0] == len(vocab):
            return known[1]
    fp = _fingerprint(tok, sorted(vocab.items(), key=lambda kv: (kv[1], kv[0])))
    with contextlib.suppress(TypeError):
        _FINGERPRINTS[tok] = (len(vocab), fp)
    return fp


def _fingerprint(tok: Any, vocab: list) -> str:
    h = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode())
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        with contextlib.suppress(Exception):  # merges are a bonus; the vocabulary alone is still a fingerprint
            h.update(json.dumps(json.loads(backend.to_str())["model"].get("merges", []), ensure_ascii=False).encode())
    return "sha256:" + h.hexdigest()


def as_attention_mask(mask: Any, name: str = "attention_mask") -> Tensor:
    """``mask`` (tensor or nested lists of 0/1 or bools) as a 2-D tensor. Raises ConfigError otherwise."""
    if not isinstance(mask, Tensor):
        try:
            mask = torch.as_tensor(mask)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"{name} must be a rectangular [batch, pos] of 0/1: cannot convert ({exc})") from exc
    if mask.ndim != 2:
        raise ConfigError(f"{name} must be [batch, pos], got shape {tuple(mask.shape)}")
    return mask


def takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes ``logits_to_keep`` (Hugging Face causal LMs do: an int or a 1-D index tensor of
    positions), so only those positions go through the unembedding."""
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
    input_ids, attention_mask = as_token_ids(input_ids, vocab_size=vocab_size_of(model)), as_attention_mask(attention_mask)
    if input_ids.shape != attention_mask.shape:
        raise ConfigError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ in shape")
    last = last_index(attention_mask) if last is None else last
    if last.shape != input_ids.shape[:1]:
        raise ConfigError(f"last has shape {tuple(last.shape)}, expected ({input_ids.shape[0]},)")
    device = next(model.parameters()).device
    kw = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
    rows = torch.arange(len(last), device=device)
    if takes_logits_to_keep(model):
        keep = torch.unique(last.cpu())  # sorted; logits come back at these positions only
        logits = model(**kw, logits_to_keep=keep.to(device)).logits
        return logits[rows, torch.searchsorted(keep, last.cpu()).to(device)]
    return model(**kw).logits[rows, last.to(device)]
