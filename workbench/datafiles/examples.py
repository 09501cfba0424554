"""From validated rows to token :class:`~workbench.data.Example` s, and to plain text for dataset-level probes.

Per shape (``prompt`` = the tokens the loss skips, ``answer`` = the tokens after them):

* ``prompt_completion`` -- prompt = ``[BOS] + tokens(prompt)``, answer = ``tokens(completion) + [EOS]`` (each
  tokenized on its own, no special tokens added; EOS when the tokenizer has one and ``add_eos``); the loss is on
  the completion (and its EOS) only.
* ``messages`` -- the chat rendered by the tokenizer's chat template (:mod:`workbench.datafiles.chat`); prompt =
  the tokens before the first assistant turn, answer = the rest, with ``answer_mask`` 1 on the tokens of
  *every* assistant turn and 0 on the user/system turns between them.
* ``text`` -- prompt = ``[BOS]`` when the model prepends one, else the first token; answer = every other token
  (language-model loss on all of them).

An empty prompt without BOS takes the answer's first token (position 0 is never predicted anyway).

Length rule (``max_length`` tokens, prompt + answer): under ``overflow="refuse"`` a longer row raises a
ConfigError naming file and row. Under ``"truncate"`` the prompt keeps its *last* ``p`` tokens (after the
BOS, which always stays first) with ``p = min(len(prompt), max(max_length - len(answer), max_length // 2))``,
and the answer keeps its *first* ``max_length - p`` tokens. So the prompt keeps its tail and at least half the
budget when it is that long, and an over-long answer loses its end. A truncated chat whose kept answer holds no
assistant token is dropped (counted in ``n_dropped``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench.data import Example
from workbench.datafiles.chat import assistant_token_mask, check_chat_template, render_chat
from workbench.datafiles.rows import DataRows, load_rows
from workbench.errors import ConfigError

__all__ = ["Encoded", "corpus_texts", "encode_rows", "to_examples"]

OVERFLOW = ("truncate", "refuse")


@dataclass
class Encoded:
    """What :func:`encode_rows` made: the examples and how many rows were truncated or dropped.

    ``row_index[k]`` is the index (into the DataRows) of ``examples[k]``; ``n_tokens`` counts prompt + answer
    tokens after truncation; ``longest_row_tokens`` is the longest row's prompt + answer before it.
    """

    examples: list[Example]
    row_index: list[int] = field(default_factory=list)
    n_truncated: int = 0
    n_dropped: int = 0
    n_tokens: int = 0
    longest_row_tokens: int = 0

    def describe(self) -> dict[str, int]:
        """JSON-ready counts: n_examples, n_truncated, n_dropped, n_tokens, longest_row_tokens."""
        return {"n_examples": len(self.examples), "n_truncated": self.n_truncated, "n_dropped": self.n_dropped,
                "n_tokens": self.n_tokens, "longest_row_tokens": self.longest_row_tokens}


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _split(rows: DataRows, i: int, tokenizer: Any, prepend_bos: bool, add_eos: bool) -> tuple[list[int], list[int], list[int] | None]:
    """``(prompt, answer, answer_mask)`` of row ``i`` before any length rule."""
    row, where = rows.rows[i], rows.where(i)
    bos = getattr(tokenizer, "bos_token_id", None)
    head = [bos] if prepend_bos and bos is not None else []
    if rows.shape == "prompt_completion":
        prompt, answer = head + _ids(tokenizer, row["prompt"]), _ids(tokenizer, row["completion"])
        eos = getattr(tokenizer, "eos_token_id", None)
        if add_eos and eos is not None:
            answer.append(eos)
        mask = None
    elif rows.shape == "messages":
        ids, full_mask = assistant_token_mask(tokenizer, row["messages"], prepend_bos=prepend_bos, where=where)
        first = max(1, full_mask.index(1))
        prompt, answer, mask = ids[:first], ids[first:], full_mask[first:]
    else:
        ids = head + _ids(tokenizer, row["text"])
        prompt, answer, mask = ids[:1], ids[1:], None
    if not prompt and answer:
        prompt, answer = answer[:1], answer[1:]
        mask = mask[1:] if mask is not None else None
    if not answer or (mask is not None and not any(mask)):
        raise ConfigError(f"{where}: nothing to train on after tokenizing ({len(prompt)} prompt token(s), no answer token); "
                          "a text row needs at least two tokens, a completion at least one")
    return prompt, answer, mask


def encode_rows(rows: DataRows, tokenizer: Any, *, prepend_bos: bool, max_length: int = 512, overflow: str = "truncate",
                add_eos: bool = True) -> Encoded:
    """Tokenize every row into an Example under the length rule of the module docstring.

    Args:
        rows: from :func:`~workbench.datafiles.load_rows`.
        prepend_bos: put the tokenizer's BOS first (the model's ``ModelInfo.prepend_bos``).
        max_length: most tokens per example (prompt + answer), >= 2.
        overflow: ``"truncate"`` or ``"refuse"``.
        add_eos: end each completion with EOS (prompt/completion shape only).

    Raises:
        ConfigError: a bad ``max_length`` / ``overflow``; a chat with a tokenizer that has no chat template; a
            row with nothing to train on; under ``"refuse"``, a row longer than ``max_length`` (naming file,
            row and the lengths).
    """
    if not isinstance(rows, DataRows):
        raise ConfigError(f"rows must be the DataRows that load_rows returned, got {type(rows).__name__}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ConfigError(f"max_length must be an int >= 2 (tokens), got {max_length!r}")
    if overflow not in OVERFLOW:
        raise ConfigError(f"overflow must be one of {OVERFLOW}, got {overflow!r}")
    if rows.shape == "messages":
        check_chat_template(tokenizer, rows.source)
    out = Encoded([])
    bos = getattr(tokenizer, "bos_token_id", None)
    for i in range(len(rows)):
        prompt, answer, mask = _split(rows, i, tokenizer, prepend_bos, add_eos)
        out.longest_row_tokens = max(out.longest_row_tokens, len(prompt) + len(answer))
        if len(prompt) + len(answer) > max_length:
            if overflow == "refuse":
                raise ConfigError(f"{rows.where(i)}: {len(prompt) + len(answer)} tokens (prompt {len(prompt)} + answer {len(answer)}) "
                                  f"exceed max_length {max_length}; raise --max-length or use --overflow truncate")
            keep_p = max(1, min(len(prompt), max(max_length - len(answer), max_length // 2)))
            lead = prompt[:1] if prepend_bos and bos is not None and prompt[0] == bos and keep_p > 1 else []
            prompt = lead + prompt[len(prompt) - (keep_p - len(lead)):]
            answer = answer[: max_length - len(prompt)]
            mask = mask[: len(answer)] if mask is not None else None
            out.n_truncated += 1
            if not answer or (mask is not None and not any(mask)):
                out.n_dropped += 1
                continue
        out.examples.append(Example(tuple(prompt), tuple(answer), answer_mask=None if mask is None else tuple(mask)))
        out.row_index.append(i)
        out.n_tokens += len(prompt) + len(answer)
    if not out.examples:
        raise ConfigError(f"{rows.source}: no example left after truncating to max_length {max_length}; raise --max-length")
    return out


def to_examples(rows: DataRows, tokenizer: Any, *, prepend_bos: bool, max_length: int = 512, overflow: str = "truncate",
                add_eos: bool = True) -> list[Example]:
    """The rows as :class:`~workbench.data.Example` s (see :func:`encode_rows`, which also returns the counts).

    Raises:
        ConfigError: as :func:`encode_rows`.
    """
    return encode_rows(rows, tokenizer, prepend_bos=prepend_bos, max_length=max_length, overflow=overflow, add_eos=add_eos).examples


def row_text(rows: DataRows, i: int, tokenizer: Any = None) -> str:
    """Row ``i`` as one plain text (see :func:`corpus_texts`)."""
    row = rows.rows[i]
    if rows.shape == "text":
        return row["text"]
    if rows.shape == "prompt_completion":
        return row["prompt"] + row["completion"]
    check_chat_template(tokenizer, rows.where(i))
    return render_chat(tokenizer, row["messages"])


def corpus_texts(source: str | DataRows, tokenizer: Any = None, *, fields: dict[str, str] | None = None,
                 limit: int | None = None) -> list[str]:
    """Every row of ``source`` (a data file, hub id or DataRows) as one plain text string, in file order.

    ``text`` rows as they are; ``prompt + completion`` concatenated with nothing in between (put any separator
    in the data); chats rendered by ``tokenizer``'s chat template (no generation prompt).

    Args:
        tokenizer: needed for chat-shaped data only.
        fields, limit: as :func:`~workbench.datafiles.load_rows`.

    Raises:
        ConfigError: as :func:`~workbench.datafiles.load_rows`; chat data without a tokenizer that has a chat
            template.
    """
    rows = source if isinstance(source, DataRows) else load_rows(source, fields=fields, limit=limit)
    if isinstance(source, DataRows) and limit is not None:
        rows = rows.subset(list(range(min(limit, len(rows)))))
    if rows.shape == "messages":
        check_chat_template(tokenizer, rows.source)
    return [row_text(rows, i, tokenizer) for i in range(len(rows))]
