"""Writing the activation store: :func:`collect_activations` (folder layout, resume and memory: the docstring of
:mod:`probes.dictionaries.store`)."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from probes.dictionaries.store_settings import (
    _DTYPES,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    StoreSettings,
    _file_sha256,
    _identity_problems,
    pair_identity,
)
from probes.diff.corpus import token_rows
from workbench.artifacts import (
    atomic_save_tensors,
    atomic_write_json,
    package_versions,
    read_json,
)
from workbench.data import right_pad
from workbench.errors import CheckpointError, ConfigError
from workbench.hooked import record
from workbench.runs import log_progress
from workbench.sites import Site


def _batches(texts: Iterable[str], tokenizer: Any, s: StoreSettings, prepend_bos: bool,
             start: int) -> Iterator[list[tuple[int, list[int]]]]:
    """``[(text index, token ids), ...]`` of ``batch_size`` non-empty rows, from text ``start`` on (a batch start)."""
    batch: list[tuple[int, list[int]]] = []
    for i, text in enumerate(texts):
        if i < start:
            continue
        batch += [(i, ids) for ids in token_rows([text], tokenizer, s.max_length, prepend_bos)]
        if len(batch) == s.batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _run_batch(pair: Any, batch: list[tuple[int, list[int]]], sites: list[Site], s: StoreSettings) -> dict[str, Tensor]:
    """Both models on one right-padded batch; every real token (after ``skip_first``) in store order: ``token_id``,
    ``row``, ``pos`` ``[n]`` and ``{base,tuned}/{hook_name}`` ``[n, d]`` on the CPU in the store's dtype."""
    tok = pair.tokenizer
    ids, mask, _ = right_pad([r for _, r in batch], tok.pad_token_id if tok.pad_token_id is not None else 0)
    keep = mask.bool()
    if s.skip_first:
        keep[:, 0] = False
    texts = torch.tensor([i for i, _ in batch])
    out = {"token_id": ids[keep], "row": texts[:, None].expand_as(ids)[keep],
           "pos": torch.arange(ids.shape[1]).expand_as(ids)[keep]}
    device = next(pair.base.parameters()).device
    ids, mask, keep_d = ids.to(device), mask.to(device), keep.to(device)
    kw = {"select": lambda a: a[keep_d], "dtype": _DTYPES[s.dtype], "device": "cpu", "stop": True}
    with record(pair.base, sites, **kw) as rec:  # stop: nothing above the last stored layer runs
        pair.base(input_ids=ids, attention_mask=mask)
    out |= {f"base/{site.hook_name}": rec[site] for site in sites}
    with pair.tuned_context(), record(pair.tuned, sites, **kw) as rec:  # hooks after the intervention's: they see its effect
        pair.tuned(input_ids=ids, attention_mask=mask)
    return out | {f"tuned/{site.hook_name}": rec[site] for site in sites}


def _open_manifest(out: Path, new: dict) -> dict:
    """The manifest to continue (same identity), or ``new`` written as the first one; never overwrites another store."""
    path = out / MANIFEST
    if not path.exists():
        stray = sorted(p.name for p in out.glob("shard_*.safetensors")) if out.is_dir() else []
        if stray:
            raise ConfigError(f"{out} holds shard files ({', '.join(stray[:3])}) but no {MANIFEST}; nothing was "
                              "overwritten: choose an empty folder, or delete these files")
        atomic_write_json(path, new)
        return new
    try:
        old = read_json(path)
    except CheckpointError as exc:
        raise ConfigError(f"{exc}; nothing was overwritten: delete {out} to start over") from exc
    ours = isinstance(old, dict) and old.get("format") == FORMAT
    problems = _identity_problems(old, new) if ours else ["not an activation store"]
    if problems:
        raise ConfigError(f"{out} holds an activation store of other models, settings or corpus ({'; '.join(problems[:6])}); "
                          "nothing was overwritten: choose another folder, or delete this one to start over")
    missing = [sh["file"] for sh in old["shards"] if not (out / sh["file"]).is_file()]
    if missing:
        raise ConfigError(f"{out} is damaged: {MANIFEST} lists shards that are missing ({', '.join(missing[:3])}); "
                          "delete the folder to start over")
    return old


@torch.no_grad()
def collect_activations(pair: Any, texts: Iterable[str], out_dir: str | Path, settings: StoreSettings, *,
                        corpus_sha256: str, log: Callable[[str], None] | None = log_progress) -> Path:
    """Stream ``texts`` through both models of ``pair`` (a :class:`~workbench.pair.ModelPair`; the tuned side runs
    inside ``pair.tuned_context()``) and write the sites' activations to ``out_dir`` (layout: module docstring).

    Resumable: when ``out_dir`` holds a manifest of the same models (weight and tokenizer hashes), settings and
    corpus, collection continues after its last complete shard (pass the same texts again: the stored ones are
    skipped, not tokenized); a complete store is returned at once. ``log`` gets one line per shard (``None``: silent).

    Args:
        texts: the corpus, read lazily once; ``row`` in the store is an index into it.
        corpus_sha256: the corpus' sha256 (64 hex digits), recorded and compared on resume.

    Returns:
        the path of ``manifest.json``.

    Raises:
        ConfigError: bad settings, a layer the model does not have, a malformed ``corpus_sha256``, a non-text item,
            an ``out_dir`` holding another store (other models, settings or corpus: nothing is overwritten) or a
            damaged one, or a corpus that no longer matches the stored part.
    """
    if not isinstance(settings, StoreSettings):
        raise ConfigError(f"settings must be a StoreSettings, got {type(settings).__name__}")
    if not isinstance(corpus_sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", corpus_sha256):
        raise ConfigError("corpus_sha256 must be 64 lowercase hex digits (hashlib.sha256(...).hexdigest()), "
                          f"got {corpus_sha256!r}")
    info, s = pair.base_info, settings
    if max(s.layers) >= info.n_layers:
        raise ConfigError(f"StoreSettings.layers: layer {max(s.layers)} does not exist "
                          f"(model has layers 0..{info.n_layers - 1})")
    sites = s.sites()
    out = Path(out_dir)
    manifest = _open_manifest(out, {
        "format": FORMAT, "format_version": FORMAT_VERSION, "models": pair_identity(pair),
        "prepend_bos": bool(pair.prepend_bos),
        "sites": [site.hook_name for site in sites], "dtype": s.dtype, "corpus_sha256": corpus_sha256,
        "d": {site.hook_name: info.d_mlp if site.hook == "mlp.hook_post" else info.d_model for site in sites},
        "settings": dataclasses.asdict(s), "versions": package_versions(), "n_tokens": 0, "rows_done": 0,
        "complete": False, "resume": {"text": 0, "skip_tokens": 0}, "shards": []})
    if manifest["complete"]:
        if log:
            log(f"activation store {out}: complete ({manifest['n_tokens']} tokens in {len(manifest['shards'])} shards)")
        return out / MANIFEST
    say = log or (lambda _m: None)
    skip, buf, fill, rows, t0, n0 = manifest["resume"]["skip_tokens"], {}, 0, {}, time.perf_counter(), manifest["n_tokens"]
    if manifest["shards"]:
        say(f"activation store {out}: resuming after shard {len(manifest['shards']) - 1} ({n0} tokens) "
            f"at text {manifest['resume']['text']}")

    def write(resume: dict) -> None:
        k = len(manifest["shards"])
        tensors = {key: v[:fill] for key, v in buf.items()}
        row_ids = torch.unique_consecutive(tensors["row"])
        toks = [torch.tensor(rows[int(i)], dtype=torch.long) for i in row_ids]
        tensors |= {"row_ids": row_ids, "row_tokens": torch.cat(toks),
                    "row_offsets": torch.tensor([0] + [len(t) for t in toks]).cumsum(0)}
        # one metadata key: safetensors writes several in a random order, and a resumed shard must equal the original
        path = atomic_save_tensors(out / f"shard_{k:05d}.safetensors", tensors, {"format": FORMAT})
        manifest["shards"].append({"file": path.name, "n_tokens": fill, "bytes": path.stat().st_size,
                                   "sha256": _file_sha256(path)})
        manifest.update(n_tokens=manifest["n_tokens"] + fill, resume=resume, rows_done=resume["text"])
        atomic_write_json(out / MANIFEST, manifest)
        rate = (manifest["n_tokens"] - n0) / max(time.perf_counter() - t0, 1e-9)
        say(f"activation store: shard {k} written ({fill} tokens, {manifest['n_tokens']} in all; {rate:.0f} tokens/s)")

    last_text = manifest["resume"]["text"] - 1
    for batch in _batches(texts, pair.tokenizer, s, pair.prepend_bos, manifest["resume"]["text"]):
        part = _run_batch(pair, batch, sites, s)
        n = len(part["token_id"])
        if skip > n:
            raise ConfigError(f"the corpus differs from the stored one: text {batch[0][0]} has fewer tokens than stored")
        rows.update(batch)
        last_text, at, skip = batch[-1][0], skip, 0
        while at < n:
            if not buf:
                buf = {key: torch.empty((s.shard_tokens, *v.shape[1:]), dtype=v.dtype) for key, v in part.items()}
            take = min(s.shard_tokens - fill, n - at)
            for key, v in part.items():
                buf[key][fill:fill + take] = v[at:at + take]
            fill, at = fill + take, at + take
            if fill == s.shard_tokens:
                write({"text": batch[0][0], "skip_tokens": at} if at < n else {"text": last_text + 1, "skip_tokens": 0})
                fill, tail = 0, int(part["row"][at]) if at < n else last_text + 1
                rows = {i: r for i, r in rows.items() if i >= tail}
        del part
    if fill:
        write({"text": last_text + 1, "skip_tokens": 0})
    if not manifest["n_tokens"]:
        raise ConfigError(f"the corpus gave no tokens to store (no text with a token{' after position 0' * s.skip_first}); "
                          "pass a file with text rows")
    manifest.update(complete=True, rows_done=last_text + 1, resume={"text": last_text + 1, "skip_tokens": 0})
    atomic_write_json(out / MANIFEST, manifest)
    say(f"activation store {out}: complete, {manifest['n_tokens']} tokens in {len(manifest['shards'])} shards")
    return out / MANIFEST
