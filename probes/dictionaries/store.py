"""The activation store: both models' activations at chosen sites over a corpus, written as safetensors shards, so
crosscoders and difference SAEs (:mod:`probes.dictionaries`) train on more tokens than fit in memory.

Folder layout (``out_dir``):

* ``manifest.json`` — the models' ids, weight hashes and tokenizer fingerprints, the sites and ``d`` of each, the
  dtype, the settings, the corpus sha256 (given by the caller), the progress (tokens stored, texts done, where to
  resume) and one entry per shard (file, tokens, bytes, sha256). Written before the first shard and after each one.
* ``shard_00000.safetensors``, … — ``base/{hook_name}`` and ``tuned/{hook_name}``: ``[n, d]`` in the store's dtype;
  ``token_id``, ``row`` (index of the text in the corpus, empty texts counted), ``pos`` (position in its row, BOS
  included): ``[n]`` int64; ``row_ids`` ``[r]``, ``row_offsets`` ``[r + 1]``, ``row_tokens``: the full token ids of
  every row with a token in the shard, concatenated (for :meth:`ActivationStore.context`).

Tokens: each text as :func:`probes.diff.corpus.token_rows` makes it (BOS first when the model prepends one, cut at
``max_length``), right-padded in batches of ``batch_size`` rows; only real (non-pad) tokens are stored, in store
order (text, then position). Every shard holds exactly ``shard_tokens`` tokens except the last, so a row may
continue in the next shard.

Resume: the batches are always the same (``batch_size`` consecutive non-empty texts from the start of the corpus),
so a shard that ends inside a batch records (first text of that batch, tokens of it already stored); a resumed
collection recomputes that batch — the same values to the bit on the same device, thread count and versions — and
drops what is stored. A shard and the manifest are each written atomically (temporary file + ``os.replace``), shard
first, so a kill at any moment leaves a manifest that lists only complete shards.

Memory: one shard buffer (``shard_tokens`` × Σ d × 2 models) and one batch's activations, whatever the corpus size.
"""

from __future__ import annotations

import operator
from bisect import bisect_right
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from probes.dictionaries.store_collect import collect_activations
from probes.dictionaries.store_settings import (
    _DTYPES,
    _INDEX_KEYS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    StoreSettings,
    _expect_problems,
    _file_sha256,
    _int,
    pair_identity,
)
from workbench.artifacts import read_json
from workbench.errors import CheckpointError, ConfigError
from workbench.sites import Site

__all__ = ["ActivationStore", "StoreSettings", "collect_activations", "pair_identity"]


class ActivationStore:
    """A store written by :func:`collect_activations`, checked on open, read with bounded memory.

    Args:
        path: the store folder (or its ``manifest.json``).
        expect: what the caller needs the store to be; keys: ``models`` (a ModelPair or :func:`pair_identity`'s
            dict: weight and tokenizer hashes must match), ``sites`` (hook names or Sites that must be stored),
            ``dtype``, ``corpus_sha256``, ``prepend_bos``, or a :class:`StoreSettings` field (``skip_first=True``).
        verify: ``"size"``: every shard exists with the recorded byte size and token count (headers only, fast);
            ``"sha256"``: also hash every shard against the manifest (reads the whole store once).

    Raises:
        ConfigError: no store at ``path``; a shard missing, truncated, rewritten or with other token counts; the
            manifest's token count disagreeing with the shards'; a mismatch with ``expect`` (one message lists all).
    """

    def __init__(self, path: str | Path, expect: dict[str, Any] | None = None, *, verify: str = "size") -> None:
        p = Path(path)
        self.path = p.parent if p.name == MANIFEST else p
        if verify not in ("size", "sha256"):
            raise ConfigError(f"verify must be 'size' or 'sha256', got {verify!r}")
        try:
            m = read_json(self.path / MANIFEST)
        except CheckpointError as exc:
            raise ConfigError(f"no readable activation store at {self.path} ({exc})") from exc
        if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"{self.path / MANIFEST} is not an activation store of format version {FORMAT_VERSION}")
        problems = self._shard_problems(m, verify) + (_expect_problems(m, expect) if expect is not None else [])
        if problems:
            raise ConfigError(f"activation store {self.path} refused: {'; '.join(problems[:6])}"
                              + (f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""))
        self.manifest = m
        self._shards = m["shards"]
        self._starts = [0]
        for sh in self._shards[:-1]:
            self._starts.append(self._starts[-1] + sh["n_tokens"])

    def _shard_problems(self, m: dict, verify: str) -> list[str]:
        problems, keys = [], [*_INDEX_KEYS, *(f"{r}/{s}" for r in ("base", "tuned") for s in m["sites"])]
        for sh in m["shards"]:
            f = self.path / sh["file"]
            if not f.is_file():
                problems.append(f"{sh['file']} is missing")
                continue
            if (size := f.stat().st_size) != sh["bytes"]:
                problems.append(f"{sh['file']} has {size} bytes, the manifest says {sh['bytes']} (truncated or rewritten)")
                continue
            try:
                with safe_open(f, "pt") as h:
                    lengths = {k: h.get_slice(k).get_shape()[0] for k in keys if k in set(h.keys())}
            except (SafetensorError, OSError) as exc:  # a bad header
                problems.append(f"{sh['file']} is unreadable ({exc})")
                continue
            if bad := [k for k in keys if lengths.get(k) != sh["n_tokens"]]:
                problems.append(f"{sh['file']}: {bad[:3]} missing or not {sh['n_tokens']} tokens long")
            elif verify == "sha256" and _file_sha256(f) != sh["sha256"]:
                problems.append(f"{sh['file']} does not match its sha256 in the manifest")
        if not problems and sum(sh["n_tokens"] for sh in m["shards"]) != m["n_tokens"]:
            problems.append(f"the shards hold {sum(sh['n_tokens'] for sh in m['shards'])} tokens, "
                            f"the manifest says {m['n_tokens']}")
        return problems

    @property
    def n_tokens(self) -> int:
        """Tokens stored (every site has one activation per token and model)."""
        return int(self.manifest["n_tokens"])

    @property
    def sites(self) -> list[str]:
        """The stored hook names (``blocks.{l}.hook_resid_post`` ...)."""
        return list(self.manifest["sites"])

    @property
    def complete(self) -> bool:
        """Whether collection finished (an incomplete store is readable: its complete shards)."""
        return bool(self.manifest["complete"])

    def d(self, site: str | Site) -> int:
        """Width of ``site``'s activations (``d_model``, or ``d_mlp`` for ``mlp.hook_post``)."""
        return int(self.manifest["d"][self._site(site)])

    def _site(self, site: str | Site) -> str:
        name = site.hook_name if isinstance(site, Site) else site
        if name not in self.manifest["sites"]:
            raise ConfigError(f"site {name!r} is not in the store {self.path} (stored: {self.manifest['sites']})")
        return name

    def _fill_window(self, shard_ids: list[int], name: str) -> dict[str, Tensor]:
        """``{"base", "tuned"}``: ``[Σ n, d]`` in the stored dtype, the shards' tokens in the order given; each shard
        file is read one tensor at a time into one preallocated buffer."""
        n = sum(self._shards[i]["n_tokens"] for i in shard_ids)
        out = {r: torch.empty((n, self.d(name)), dtype=_DTYPES[self.manifest["dtype"]]) for r in ("base", "tuned")}
        at = 0
        for i in shard_ids:
            with safe_open(self.path / self._shards[i]["file"], "pt") as f:
                for r, buf in out.items():
                    buf[at:at + self._shards[i]["n_tokens"]] = f.get_tensor(f"{r}/{name}")
            at += self._shards[i]["n_tokens"]
        return out

    def _stream(self, name: str, groups: list[list[int]], batch_tokens: int,
                g: torch.Generator | None) -> Iterator[tuple[int, dict[str, Tensor]]]:
        """Batches of ``batch_tokens`` (the last one shorter) from one window of shards at a time (``groups``), each
        window's tokens permuted by ``g`` (``None``: in order); a batch may span two windows."""
        carry: dict[str, Tensor] | None = None
        start = 0
        for group in groups:
            window = self._fill_window(group, name)
            n = window["base"].shape[0]
            order = torch.randperm(n, generator=g) if g is not None else torch.arange(n)
            at = 0
            while at < n:
                idx = order[at:at + batch_tokens - (len(carry["base"]) if carry else 0)]
                at += len(idx)
                part = {r: window[r][idx].float() for r in ("base", "tuned")}
                if carry:
                    part, carry = {r: torch.cat([carry[r], part[r]]) for r in part}, None
                if len(part["base"]) < batch_tokens:
                    carry = part
                else:
                    yield start, part
                    start += batch_tokens
            del window, order  # before the next window is read: at most one window in memory
        if carry:
            yield start, carry

    def batches(self, site: str | Site, batch_tokens: int, *, seed: int, epochs: int = 1,
                shards_in_memory: int = 2) -> Iterator[dict[str, Tensor]]:
        """Shuffled training batches ``{"base": Float[Tensor, "B d"], "tuned": Float[Tensor, "B d"]}`` (float32).

        Each epoch shuffles the shard order, reads ``shards_in_memory`` shards at a time into one buffer and yields
        its tokens in a random order; every token comes exactly once per epoch (the epoch's last batch may be
        shorter). Memory: ``shards_in_memory`` shards of this site plus one batch. The same ``seed`` gives the same
        batches.

        Raises:
            ConfigError: a site that is not stored, or a count that is not a positive integer.
        """
        name, k = self._site(site), _int("shards_in_memory", shards_in_memory, 1)
        _int("batch_tokens", batch_tokens, 1), _int("epochs", epochs, 1)
        g = torch.Generator().manual_seed(_int("seed", seed, 0))
        for _ in range(epochs):
            order = torch.randperm(len(self._shards), generator=g).tolist()
            for _, batch in self._stream(name, [order[i:i + k] for i in range(0, len(order), k)], batch_tokens, g):
                yield batch

    def ordered(self, site: str | Site, batch_tokens: int) -> Iterator[tuple[int, dict[str, Tensor]]]:
        """``(start, {"base": Float[Tensor, "B d"], "tuned": ...})`` in store order: the batch holds tokens
        ``start .. start + B - 1`` (indices into :meth:`token_info`); one shard in memory at a time.

        Raises:
            ConfigError: a site that is not stored, or a ``batch_tokens`` that is not a positive integer.
        """
        name = self._site(site)
        yield from self._stream(name, [[i] for i in range(len(self._shards))], _int("batch_tokens", batch_tokens, 1), None)

    def token_info(self) -> dict[str, Tensor]:
        """``{"token_id", "row", "pos"}``: ``Int[Tensor, "n_tokens"]`` (int64) in store order: the token, the index of
        its text in the corpus, its position in its row (BOS included). 24 bytes per token."""
        parts: dict[str, list[Tensor]] = {k: [] for k in _INDEX_KEYS}
        for sh in self._shards:
            with safe_open(self.path / sh["file"], "pt") as f:
                for k in _INDEX_KEYS:
                    parts[k].append(f.get_tensor(k))
        return {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for k, v in parts.items()}

    def context(self, index: int, window: int) -> list[int]:
        """Token ids of stored token ``index``'s row at positions ``pos - window .. pos + window`` (clipped to the
        row; the token itself is at list index ``min(window, pos)``). Reads only that shard's row table.

        Raises:
            ConfigError: an index outside ``0 .. n_tokens - 1`` or a negative ``window``.
        """
        try:
            index = operator.index(index)
        except TypeError:
            raise ConfigError(f"index must be an integer, got {type(index).__name__}") from None
        if not 0 <= index < self.n_tokens:
            raise ConfigError(f"index {index} is outside the store's tokens 0..{self.n_tokens - 1}")
        _int("window", window, 0)
        k = bisect_right(self._starts, index) - 1
        local = index - self._starts[k]
        with safe_open(self.path / self._shards[k]["file"], "pt") as f:
            row, pos = (int(f.get_slice(key)[local:local + 1][0]) for key in ("row", "pos"))
            j = int(torch.searchsorted(f.get_tensor("row_ids"), row))
            lo, hi = (int(x) for x in f.get_tensor("row_offsets")[j:j + 2])
            return f.get_slice("row_tokens")[lo + max(0, pos - window):lo + min(hi - lo, pos + window + 1)].tolist()
