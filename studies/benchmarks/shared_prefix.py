"""Benchmark: exact head patching — full recomputation vs prefix-shared (positions and layers) vs TransformerLens.

Everything runs in ONE process on SmolLM2, side by side, each measurement the median of ``--repeats``:

(a) **all-heads sweep at all positions** on one ``--seq-all``-token prompt (corrupt prompt as source, every head's
    ``attn.hook_z`` at every position, ``n_layers * n_heads`` variants): ``activation_patch(..., share_prefix=False)``
    (every variant recomputes every layer: the path before prefix sharing) against ``share_prefix=True`` (each variant
    runs only the layers from its head's layer up, from the target's residual stream there; positions cannot be shared,
    every position is patched; :mod:`probes.shared_prefix`, :mod:`workbench_kernels.forward_from_layer`).
(b) **TransformerLens** ``transformer_lens.patching.get_act_patch_attn_head_out_all_pos`` on the same prompt pair with a
    ``TransformerBridge.boot_transformers`` of a second copy of the same weights (booting rewires the model and makes
    it eager; TL runs the *corrupted* tokens with the *clean* cache patched in, so it is called with our target as
    its ``corrupted_tokens`` and our source's cache; its metric minus its unpatched run is our effect).
(c) **last-position per-head sweep** on ``--prompts`` random ``--seq``-token prompts with prefix sharing (the target's
    first ``seq - 1`` positions once; each variant runs the last token through the layers from its head's layer up, on
    a key/value cache tiled in those layers), and, side by side on the first ``--compare-prompts`` of them, the full
    recomputation against prefix sharing (the full path on all 48 prompts alone would take about 10 minutes).

The metric is the logit difference of two random tokens. The script checks that every pair of paths gives the same
effects (max |Δ| reported), records the wall time, the process CPU time over wall time (2.0 on an idle 2-core machine;
lower means contention) and the load average, and writes ``<out>/benchmark.json``.

Run:  python -m studies.benchmarks.shared_prefix [--prompts 48] [--seq 30] [--seq-all 25] [--repeats 1]
      [--compare-prompts 8] [--skip-tl] [--out runs/bench_prefix]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from probes import metrics
from probes.patch_sites import head_sites
from probes.patching import activation_patch
from workbench.artifacts import atomic_write_json, package_versions
from workbench.models import load_model


def _timed(fns: dict[str, Callable[[], torch.Tensor]], repeats: int) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Each ``fns[name]()``'s result and timings, the paths interleaved ``repeats`` times (so a burst of contention from
    other processes hits them alike): ``{"wall_s", "cpu_s", "median_s", "best_s", "cpu_per_wall", "loadavg_1m"}`` per
    name (``cpu_s``: this process's CPU time, less sensitive than wall time to other processes on a shared machine)."""
    out: dict[str, torch.Tensor] = {}
    times = {name: {"wall_s": [], "cpu_s": [], "cpu_per_wall": [], "loadavg_1m": []} for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            out[name] = fn()
            wall = time.perf_counter() - t0
            times[name]["wall_s"].append(wall)
            times[name]["cpu_s"].append(time.process_time() - c0)
            times[name]["cpu_per_wall"].append((time.process_time() - c0) / wall)
            times[name]["loadavg_1m"].append(os.getloadavg()[0])
    for t in times.values():
        t.update(median_s=statistics.median(t["wall_s"]), best_s=min(t["wall_s"]))
    return out, times


def _tl_all_heads(bridge, target: torch.Tensor, source: torch.Tensor, metric) -> torch.Tensor:
    """TransformerLens's own all-positions head sweep, as effects ``[n_layers * n_heads]`` (metric minus unpatched)."""
    from transformer_lens import patching

    def tl_metric(logits):
        return metric(logits[:, -1].float()).sum()

    bar = patching.tqdm
    patching.tqdm = functools.partial(bar, disable=True)  # its per-patch progress bar, not part of the work
    try:
        with torch.no_grad():
            _, source_cache = bridge.run_with_cache(source)
            patched = patching.get_act_patch_attn_head_out_all_pos(bridge, target, source_cache, tl_metric)
            base = tl_metric(bridge(target))
    finally:
        patching.tqdm = bar
    return (patched - base).flatten()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=48, help="prompts of the last-position sweep (c)")
    ap.add_argument("--seq", type=int, default=30, help="tokens per prompt in (c)")
    ap.add_argument("--seq-all", type=int, default=25, help="tokens of the one prompt of the all-positions sweep (a, b)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats of (a) and (c)'s shared run")
    ap.add_argument("--skip-tl", action="store_true", help="leave out (b)")
    ap.add_argument("--compare-prompts", type=int, default=4,
                    help="(c): the full recomputation on the first N prompts, beside prefix sharing on the same N (0: none)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--out", default="runs/bench_prefix")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    model, _, info = load_model(args.model)
    g = torch.Generator().manual_seed(0)
    vocab = info.d_vocab

    def prompts(n: int, seq: int):
        target, source = torch.randint(100, vocab, (n, seq), generator=g), torch.randint(100, vocab, (n, seq), generator=g)
        good, bad = torch.randint(100, vocab, (n,), generator=g), torch.randint(100, vocab, (n, 1), generator=g)
        return target, source, good, bad

    record: dict = {"config": vars(args), "load_at_start": os.getloadavg()}
    # (a) all heads at all positions, one prompt
    target, source, good, bad = prompts(1, args.seq_all)
    metric = metrics.logit_diff(good, bad)
    sites = head_sites(info.dims)
    res, t = _timed({"full": lambda: activation_patch(model, sites, target, source, metric, share_prefix=False),
                     "shared": lambda: activation_patch(model, sites, target, source, metric)}, args.repeats)
    record["a_all_positions"] = {"n_variants": len(sites), **t, "speedup": t["full"]["median_s"] / t["shared"]["median_s"],
                                 "speedup_best": t["full"]["best_s"] / t["shared"]["best_s"],
                                 "max_abs_effect_difference": float((res["full"] - res["shared"]).abs().max()),
                                 "max_abs_effect": float(res["full"].abs().max())}
    # (b) TransformerLens on the same prompt pair, on its own copy of the weights (once: it is the slow one)
    if not args.skip_tl:
        from workbench.hooked import to_bridge

        tl_model, tl_tok, tl_info = load_model(args.model)
        bridge = to_bridge(tl_model, tl_tok, tl_info.path)
        tl, t_tl = _timed({"tl": lambda: _tl_all_heads(bridge, target, source, metric)}, 1)
        a = record["a_all_positions"]
        record["b_transformer_lens"] = {**t_tl, "ours_over_tl": t_tl["tl"]["median_s"] / a["shared"]["median_s"],
                                        "old_over_tl": t_tl["tl"]["median_s"] / a["full"]["median_s"],
                                        "max_abs_effect_difference_vs_ours": float((tl["tl"] - res["shared"][:, 0]).abs().max())}
        del bridge, tl_model
    # (c) last position, every head, many prompts
    target, source, good, bad = prompts(args.prompts, args.seq)
    metric = metrics.logit_diff(good, bad)
    sites = head_sites(info.dims, pos=-1)
    res, t = _timed({"shared": lambda: activation_patch(model, sites, target, source, metric)}, args.repeats)
    record["c_last_position"] = {"n_variants": len(sites), "prompts": args.prompts, **t}
    k = min(args.compare_prompts, args.prompts)
    if k:  # the old path on the first k prompts only (on all 48 it takes about 10 min), beside the new one on the same k
        m_k = metrics.logit_diff(good[:k], bad[:k])
        res_k, t_k = _timed({"full": lambda: activation_patch(model, sites, target[:k], source[:k], m_k, share_prefix=False),
                             "shared": lambda: activation_patch(model, sites, target[:k], source[:k], m_k)}, 1)
        record["c_last_position"]["compared_on_first"] = {
            "prompts": k, **t_k, "speedup": t_k["full"]["median_s"] / t_k["shared"]["median_s"],
            "max_abs_effect_difference": float((res_k["full"] - res_k["shared"]).abs().max()),
            "max_abs_effect_difference_vs_the_full_batch_run": float((res_k["shared"] - res["shared"][:, :k]).abs().max())}
    record["total_s"] = time.perf_counter() - t_start
    record["machine"] = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "loadavg_end": os.getloadavg(),
                         "device": str(next(model.parameters()).device), "versions": package_versions()}
    _print(record)
    atomic_write_json(Path(args.out) / "benchmark.json", record)
    return record


def _print(r: dict) -> None:
    a = r["a_all_positions"]
    print(f"(a) all {a['n_variants']} heads, all positions, 1 x {r['config']['seq_all']} tokens: full "
          f"{a['full']['median_s']:.2f} s (best {a['full']['best_s']:.2f}), shared {a['shared']['median_s']:.2f} s "
          f"(best {a['shared']['best_s']:.2f}): {a['speedup']:.2f}x by median, {a['speedup_best']:.2f}x by best, "
          f"{min(a['full']['cpu_s']) / min(a['shared']['cpu_s']):.2f}x by CPU time; "
          f"max |Δeffect| {a['max_abs_effect_difference']:.1e} (max |effect| {a['max_abs_effect']:.2f})")
    if "b_transformer_lens" in r:
        b = r["b_transformer_lens"]
        print(f"(b) TransformerLens get_act_patch_attn_head_out_all_pos {b['tl']['median_s']:.2f} s: ours "
              f"{b['ours_over_tl']:.1f}x faster (old path {b['old_over_tl']:.1f}x; by CPU time "
              f"{b['tl']['cpu_s'][0] / min(a['shared']['cpu_s']):.1f}x and {b['tl']['cpu_s'][0] / min(a['full']['cpu_s']):.1f}x); max |Δeffect| vs ours "
              f"{b['max_abs_effect_difference_vs_ours']:.1e}")
    c = r["c_last_position"]
    line = (f"(c) {c['n_variants']} heads at the last position, {c['prompts']} x {r['config']['seq']} tokens: shared "
            f"{c['shared']['median_s']:.1f} s (best {c['shared']['best_s']:.1f})")
    if "compared_on_first" in c:
        k = c["compared_on_first"]
        line += (f"; on the first {k['prompts']}: full {k['full']['median_s']:.1f} s, shared {k['shared']['median_s']:.1f} s "
                 f"({k['speedup']:.1f}x), max |Δeffect| {k['max_abs_effect_difference']:.1e}")
    print(line)
    timed = [a["full"], a["shared"], c["shared"], r.get("b_transformer_lens", {}).get("tl")]
    timed += [c["compared_on_first"]["full"], c["compared_on_first"]["shared"]] if "compared_on_first" in c else []
    cpu = [x for t in timed if t for x in t["cpu_per_wall"]]
    print(f"CPU/wall {min(cpu):.2f}-{max(cpu):.2f} (2.0 = both cores ours); load average at start {r['load_at_start'][0]:.1f}, "
          f"end {r['machine']['loadavg_end'][0]:.1f}; total {r['total_s']:.0f} s")


if __name__ == "__main__":
    main()
