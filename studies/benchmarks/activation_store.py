"""Benchmark: the activation store's collection pass against two plain forward passes per batch.

``probes.dictionaries.collect_activations`` is meant to cost about one forward pass of each model per batch: the
activations are read by hooks inside those passes (each pass stops after the last stored layer, so the layers above
it and the unembedding are skipped), the real tokens selected, cast and copied into the shard buffer, and each full
shard written to disk (safetensors, sha256, manifest). This script measures, on the same batches, in one process:

* ``plain``: for each batch, ``base(input_ids, attention_mask).logits`` then ``tuned(...).logits`` (no hooks);
* ``collect``: ``collect_activations(pair, texts, <fresh temp folder>, StoreSettings(...))`` with the same batch size
  and rows, shards and manifest written to a temporary folder (removed after each run);

and reports tokens/s of each (tokens = real tokens forwarded, BOS included, for both) and the ratio
``collect / plain`` (aim: ≥ 0.8). Timing: one warm-up of each, then ``--repeats`` alternating timed runs; median
and best wall time, best process CPU time, and CPU time / wall time (≈ the thread count on an idle machine).

Pair: SmolLM2-135M-Instruct as the base; the tuned model is the base with every weight perturbed (seeded; speed only,
as in :mod:`studies.benchmarks.diff_speed`, whose corpus this script also uses).

Run:  python -m studies.benchmarks.activation_store [--out runs/bench] [--layers 15] [--mlp-post] [--dtype float32]
      [--rows 16] [--batch 8] [--max-length 64] [--shard-tokens 512] [--repeats 3]
Writes ``<out>/activation_store.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import tempfile
from pathlib import Path

import torch

from probes.dictionaries import StoreSettings, collect_activations
from probes.diff.corpus import token_rows
from studies.benchmarks.diff_speed import compare_passes, corpus, perturbed_copy, report_passes
from workbench.artifacts import atomic_write_json
from workbench.data import right_pad
from workbench.models import load_model
from workbench.pair import ModelPair


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m studies.benchmarks.activation_store", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--layers", default="15", help="comma-separated layers (hook_resid_post at each)")
    ap.add_argument("--mlp-post", action="store_true", help="also store mlp.hook_post at those layers")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--shard-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    settings = StoreSettings(layers=[int(x) for x in args.layers.split(",")], mlp_post=args.mlp_post, dtype=args.dtype,
                             shard_tokens=args.shard_tokens, batch_size=args.batch, max_length=args.max_length)
    base, tok, info = load_model(args.model, device="cpu")
    tuned = perturbed_copy(base)
    pair = ModelPair(base, tuned, tok, info, dataclasses.replace(info, id=f"{info.id}+noise", weight_hash=f"{info.weight_hash}+noise"))
    texts = corpus(args.rows)
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    rows = list(token_rows(texts, tok, args.max_length, pair.prepend_bos))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batches = [right_pad(rows[i:i + args.batch], pad)[:2] for i in range(0, len(rows), args.batch)]
    n_tokens = sum(len(r) for r in rows)
    stored: list[int] = []

    @torch.no_grad()
    def plain() -> None:
        for ids, mask in batches:
            _ = base(input_ids=ids, attention_mask=mask).logits
            _ = tuned(input_ids=ids, attention_mask=mask).logits

    def collect() -> None:
        with tempfile.TemporaryDirectory(prefix="activation-store-bench-") as d:
            collect_activations(pair, texts, Path(d) / "store", settings, corpus_sha256=digest, log=None)
            stored.append(sum(p.stat().st_size for p in (Path(d) / "store").glob("shard_*.safetensors")))

    record = compare_passes({"plain": plain, "collect": collect}, n_tokens, args.repeats, args,
                            {"settings": dataclasses.asdict(settings), "sites": [s.hook_name for s in settings.sites()],
                             "n_rows": len(rows), "n_batches": len(batches)})
    record["store_bytes"] = stored[-1]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "activation_store.json", record)
    print(f"{len(rows)} rows, {n_tokens} tokens, {len(batches)} batches of {args.batch} (max {args.max_length} tokens); sites "
          f"{record['sites']}, {args.dtype}, {stored[-1] / 2**20:.1f} MiB of shards; {torch.get_num_threads()} threads")
    report_passes(record, {"plain": "two plain forwards (base + tuned)", "collect": "collect_activations (hooks, shards, manifest)"},
                  out / "activation_store.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
