"""Benchmark: the cost of ``workbench diff``'s streaming pass against two plain forward passes per batch.

``probes.diff.diff_corpus`` is meant to cost about one forward pass of each model per batch: every activation
it needs (``hook_resid_post`` and ``attn.hook_z`` of every layer, both models' logits) is read by hooks inside
those two passes, and the rest is reductions. This script measures, on the same batches, in one process:

* ``plain``: for each batch, ``base(input_ids, attention_mask).logits`` then ``tuned(...).logits``;
* ``diff``: ``diff_corpus(pair, texts, DiffSettings(...))`` (hooks, KL, diff mining, layer/head differences,
  ADL sums, the logit lens on every ``lens_token_stride``-th token), with the same batch size and rows;

and reports tokens/s of each and the ratio ``diff / plain`` (aim: ≥ 0.8). Timing: one warm-up of each, then
``--repeats`` alternating timed runs; the median and the best (minimum) wall time are reported, and the ratio of
the best process CPU times (less sensitive to other processes on a shared machine), with CPU time / wall time
(≈ the thread count when the machine is idle, lower when other processes compete).

Pair: SmolLM2-135M-Instruct as the base; the tuned model is a deep copy with every weight perturbed by
``N(0, (0.01 · std(W))²)`` (seeded) — a stand-in with the same cost as any full fine-tune (speed only).
Corpus: ``studies/dataset_diff/data/unrelated.jsonl``, every row joined with the next three (≈ 60 tokens), cut
at ``--max-length``.

Run:  python -m studies.benchmarks.diff_speed [--out runs/bench] [--batch 8] [--max-length 64] [--rows 32] [--repeats 2]
Writes ``<out>/diff_speed.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from probes.diff import DiffSettings, diff_corpus
from probes.diff.corpus import token_rows
from workbench.artifacts import atomic_write_json, package_versions
from workbench.data import right_pad
from workbench.models import load_model
from workbench.pair import ModelPair

DATA = Path(__file__).resolve().parents[1] / "dataset_diff" / "data" / "unrelated.jsonl"


def corpus(n_rows: int) -> list[str]:
    texts = [json.loads(line)["text"] for line in DATA.read_text().splitlines() if line.strip()]
    return [" ".join(texts[(i + j) % len(texts)] for j in range(4)) for i in range(n_rows)]


def perturbed_copy(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    tuned = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn(p.shape, generator=g).to(p.device, p.dtype) * 0.01 * p.float().std().item())
    return tuned


def timed(fn) -> tuple[float, float]:
    """``(wall s, process CPU s)`` of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def compare_passes(passes: dict, n_tokens: int, repeats: int, args: argparse.Namespace, extra: dict) -> dict:
    """Time ``passes`` (name -> no-argument callable; the first is the baseline) once as warm-up, then ``repeats``
    times interleaved; the record of wall and process-CPU seconds, tokens/s (median and best) and the ratio of each
    other pass to the baseline (by median wall, best wall and best CPU time), with the machine and versions."""
    for fn in passes.values():
        fn()  # warm-up
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in passes}
    for _ in range(repeats):
        for name, fn in passes.items():
            times[name].append(timed(fn))
    med = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    best = {k: min(w for w, _ in v) for k, v in times.items()}
    best_cpu = {k: min(c for _, c in v) for k, v in times.items()}
    base = next(iter(passes))
    record = {"time": datetime.now(timezone.utc).isoformat(), "machine": platform.platform(), "processor": platform.processor(),
              "torch_threads": torch.get_num_threads(), "versions": package_versions(), "args": vars(args),
              "tuned": "deep copy of the base, every weight + N(0, (0.01·std W)²), seed 0", **extra, "n_tokens": n_tokens,
              "wall_s": {k: [w for w, _ in v] for k, v in times.items()}, "median_s": med,
              "tokens_per_s": {k: n_tokens / v for k, v in med.items()},
              "cpu_s": {k: [c for _, c in v] for k, v in times.items()}, "best_s": best,
              "tokens_per_s_best": {k: n_tokens / v for k, v in best.items()},
              "cpu_per_wall": {k: sum(c for _, c in v) / sum(w for w, _ in v) for k, v in times.items()}}
    for k in list(passes)[1:]:
        record[f"ratio_{k}_over_{base}"] = med[base] / med[k]
        record["ratio_best_wall"], record["ratio_best_cpu"] = best[base] / best[k], best_cpu[base] / best_cpu[k]
    return record


def report_passes(record: dict, labels: dict[str, str], path: Path) -> None:
    """Print the record of :func:`compare_passes` as a markdown table and the ratio line (``labels``: pass -> row label)."""
    print("| pass | median s | best s | tokens/s (median) | tokens/s (best) | best CPU s | CPU/wall |\n|---|---:|---:|---:|---:|---:|---:|")
    for k, label in labels.items():
        print(f"| {label} | {record['median_s'][k]:.2f} | {record['best_s'][k]:.2f} | {record['tokens_per_s'][k]:.1f} | "
              f"{record['tokens_per_s_best'][k]:.1f} | {min(record['cpu_s'][k]):.2f} | {record['cpu_per_wall'][k]:.2f} |")
    base, other = list(labels)[:2]
    print(f"ratio {other} / {base}, tokens/s: median {record[f'ratio_{other}_over_{base}']:.2f}, best {record['ratio_best_wall']:.2f}; "
          f"by process CPU time {record['ratio_best_cpu']:.2f} (aim ≥ 0.8); wrote {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m studies.benchmarks.diff_speed", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--lens-stride", type=int, default=128, help="DiffSettings.lens_token_stride (1 = every position)")
    args = ap.parse_args(argv)

    base, tok, info = load_model(args.model, device="cpu")
    tuned = perturbed_copy(base)
    pair = ModelPair(base, tuned, tok, info, dataclasses.replace(info, id=f"{info.id}+noise"))
    texts = corpus(args.rows)
    rows = list(token_rows(texts, tok, args.max_length, pair.prepend_bos))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batches = [right_pad(rows[i:i + args.batch], pad)[:2] for i in range(0, len(rows), args.batch)]
    n_tokens = sum(len(r) for r in rows)
    settings = DiffSettings(batch_size=args.batch, max_length=args.max_length, lens_token_stride=args.lens_stride)

    @torch.no_grad()
    def plain() -> None:
        for ids, mask in batches:
            _ = base(input_ids=ids, attention_mask=mask).logits
            _ = tuned(input_ids=ids, attention_mask=mask).logits

    def diff() -> None:
        diff_corpus(pair, texts, settings)

    record = compare_passes({"plain": plain, "diff": diff}, n_tokens, args.repeats, args,
                            {"n_rows": len(rows), "n_batches": len(batches)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "diff_speed.json", record)
    print(f"{len(rows)} rows, {n_tokens} tokens, {len(batches)} batches of {args.batch} (max {args.max_length} tokens); "
          f"{torch.get_num_threads()} threads")
    report_passes(record, {"plain": "two plain forwards (base + tuned)", "diff": "diff_corpus streaming pass"}, out / "diff_speed.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
