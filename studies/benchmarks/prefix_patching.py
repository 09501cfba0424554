"""Benchmark: exact activation patching of every head at the last position, full recomputation vs prefix-shared.

Both paths run in ONE process on the same prompts: ``activation_patch(..., share_prefix=False)`` (every variant
recomputes the whole prompt — the path before prefix sharing) and ``share_prefix=True`` (the target's prefix once,
each variant only the last position on a copy of its key/value cache; :mod:`probes.prefix_patching`). The sweep is
the per-head ``attn.hook_z`` patch at the last position with the corrupt prompt as source (``n_layers * n_heads``
variants), the metric the logit difference of two random tokens. The script checks that both give the same effects
(max |Δ| reported) and reports the wall time of each (median of ``--repeats``) and their ratio.

Run:  python -m studies.benchmarks.prefix_patching [--prompts 48] [--seq 30] [--repeats 1] [--out runs/bench_prefix]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from probes import metrics
from probes.patching import activation_patch, head_sites
from workbench.artifacts import atomic_write_json, package_versions
from workbench.models import load_model


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--seq", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--out", default="runs/bench_prefix")
    args = ap.parse_args(argv)
    model, _, info = load_model(args.model)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(100, info.d_vocab, (args.prompts, args.seq), generator=g)
    corrupt = torch.randint(100, info.d_vocab, (args.prompts, args.seq), generator=g)
    metric = metrics.logit_diff(torch.randint(100, info.d_vocab, (args.prompts,), generator=g),
                                torch.randint(100, info.d_vocab, (args.prompts, 1), generator=g))
    sites = head_sites(info.dims, pos=-1)
    times: dict[str, list[float]] = {"full": [], "prefix_shared": []}
    effects = {}
    for _ in range(args.repeats):
        for name, share in (("full", False), ("prefix_shared", True)):
            t0 = time.perf_counter()
            effects[name] = activation_patch(model, sites, clean, corrupt, metric, share_prefix=share)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    record = {"config": vars(args), "n_variants": len(sites), "median_s": med, "times_s": times,
              "speedup": med["full"] / med["prefix_shared"],
              "max_abs_effect_difference": float((effects["full"] - effects["prefix_shared"]).abs().max()),
              "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "loadavg": os.getloadavg(),
                          "device": str(next(model.parameters()).device), "versions": package_versions()}}
    print(f"{len(sites)} heads x {args.prompts} prompts x {args.seq} tokens: full {med['full']:.1f} s, "
          f"prefix-shared {med['prefix_shared']:.1f} s ({record['speedup']:.1f}x); max |Δeffect| "
          f"{record['max_abs_effect_difference']:.2e}")
    atomic_write_json(Path(args.out) / "benchmark.json", record)
    return record


if __name__ == "__main__":
    main()
