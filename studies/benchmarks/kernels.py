"""CPU benchmark of every ``kernels/`` entry against its eager reference, side by side in ONE process (SmolLM2).

Sections (``--only`` picks some; each variant is timed in alternating rounds so that the load of other processes
on the machine hits all variants alike; wall and process-CPU seconds are reported with the load average):

* ``lens``     the logit lens of every layer's ``hook_resid_post`` (30 layers) at 30 and 256 positions of a real
               prompt, top-5 plus the final top-1 token's probability: the materialising reference
               (:func:`probes.logit_lens.full_logit_lens`) and the streaming kernel
               (:func:`workbench_kernels.logit_lens.lens_topk`) at several tile sizes, its default last. Peak memory of each: the increase of
               VmHWM over the resident set after ``/proc/self/clear_refs`` <- 5. Equality with the reference checked.
* ``hooks``    the cost of CAFT's hooks under LoFiT (the candidate for a fused hook call): a CAFT(LoFiT) training
               step and forward (CAFT on 4 layers' ``hook_resid_post``, LoFiT offsets on 10 % of heads'
               ``attn.hook_z``) against LoFiT alone, batch 8 × 64 tokens. The difference bounds what any fusion of
               CAFT's op could save on this CPU.
* ``compile``  ``torch.compile`` of the model forward that :func:`probes.patching.activation_patch` runs (hooks
               attached by ``run_patched``), over a sweep of every head at the last position: eager vs compiled,
               the compiled first call (compilation included) and a second call reported separately.

Run:  python -m studies.benchmarks.kernels [--only lens hooks compile] [--rounds 3] [--out runs/bench_kernels]
Writes ``<out>/benchmark.json`` and prints a table per section.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from workbench_kernels.logit_lens import lens_topk
from probes.logit_lens import full_logit_lens
from workbench.architecture import final_norm, logit_softcap, unembedding
from workbench.artifacts import atomic_write_json, package_versions
from workbench.hooked import record
from workbench.models import load_model
from workbench.sites import Site


def _kib(key: str) -> int:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE).group(1))


def peak_mib(fn: Callable[[], Any]) -> float:
    """Increase of the peak resident set (VmHWM) over the current one while ``fn`` runs, MiB."""
    base = _kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    fn()
    return (_kib("VmHWM") - base) / 1024


def rounds(variants: dict[str, Callable[[], Any]], n: int) -> dict[str, dict[str, float]]:
    """One warm-up each, then ``n`` alternating rounds: median wall and process-CPU seconds per variant."""
    for fn in variants.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(n):
        for name, fn in variants.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    return {k: {"wall_s": statistics.median(wall[k]), "cpu_s": statistics.median(cpu[k]), "walls": wall[k]} for k in variants}


def bench_lens(model, tok, args) -> dict[str, Any]:
    norm, head, cap = final_norm(model), unembedding(model), logit_softcap(model)
    text = " ".join(["The quick brown fox jumps over the lazy dog while the researcher reads the logit lens."] * 40)
    out = {}
    for pos in (30, 256):
        ids = tok(text, return_tensors="pt").input_ids[:, :pos]
        sites = [Site(layer, "hook_resid_post") for layer in range(model.config.num_hidden_layers)]
        with torch.no_grad(), record(model, sites) as rec:
            final = model(ids).logits[0].argmax(-1)
        resid = torch.stack([rec[s][0] for s in sites])  # [n_layers, pos, d_model]
        rows, tgt = resid.flatten(0, 1), final.repeat(resid.shape[0])
        k = 5
        variants = {
            "reference (full softmax)": lambda: full_logit_lens(model, resid, final, k=k),
            **{f"kernel, {r} rows x whole vocab": (lambda r=r: lens_topk(norm, head, rows, k=k, target=tgt, cap=cap,
                                                                         rows_per_chunk=r, vocab_per_chunk=None))
               for r in (32, 64, 256)},
            "kernel, 256 rows x 8192 vocab": lambda: lens_topk(norm, head, rows, k=k, target=tgt, cap=cap, rows_per_chunk=256,
                                                               vocab_per_chunk=8192),
            "kernel, 1024 rows x 4096 vocab (default)": lambda: lens_topk(norm, head, rows, k=k, target=tgt, cap=cap),
        }
        ref = full_logit_lens(model, resid, final, k=k)
        ids_k, probs_k, tp_k = lens_topk(norm, head, rows, k=k, target=tgt, cap=cap)
        equal = {"top_ids": bool(torch.equal(ids_k.view_as(ref.top_ids), ref.top_ids)),
                 "max_abs_prob_diff": float((probs_k.view_as(ref.top_probs) - ref.top_probs).abs().max()),
                 "max_abs_target_prob_diff": float((tp_k.view_as(ref.target_prob) - ref.target_prob).abs().max())}
        timing = rounds(variants, args.rounds)
        for name, fn in variants.items():
            timing[name]["peak_extra_mib"] = peak_mib(fn)
        out[f"{resid.shape[0]} layers x {pos} positions"] = {"timing": timing, "equality": equal}
    return out


def bench_hooks(model, tok, args) -> dict[str, Any]:
    from workbench.architecture import Dims
    from workbench.methods.caft.intervention import CaftIntervention
    from workbench.methods.lofit.config import LofitConfig
    from workbench.methods.lofit.intervention import LofitOffsets

    c = model.config
    dims = Dims.of(model)
    g = torch.Generator().manual_seed(0)
    n = c.num_hidden_layers
    caft = CaftIntervention.from_directions({l: torch.randn(4, c.hidden_size, generator=g) for l in (n // 4, n // 2, 3 * n // 4, n - 1)}, dims)
    heads = [(l, h) for l in range(n) for h in range(c.num_attention_heads)][::10]
    lofit = LofitOffsets(LofitConfig(heads=heads), dims)
    opt = torch.optim.AdamW(lofit.parameters(), lr=1e-3)
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.randint(100, c.vocab_size, (8, 64), generator=g)

    def step():
        loss = torch.nn.functional.cross_entropy(model(ids).logits[:, -1].float(), ids[:, 0])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def fwd():
        with torch.no_grad():
            model(ids)

    out = {}
    for label, fn in (("training step", step), ("forward", fwd)):
        def both(fn=fn):
            with caft.attach(model), lofit.attach(model):
                fn()

        def lofit_only(fn=fn):
            with lofit.attach(model):
                fn()

        out[label] = rounds({"CAFT(LoFiT) hooks": both, "LoFiT hooks only": lofit_only}, args.rounds)
    return out


def bench_compile(model, tok, args) -> dict[str, Any]:
    from probes import metrics
    from probes.patch_sites import head_sites
    from probes.patching import activation_patch
    from workbench.architecture import Dims

    dims = Dims.of(model)
    g = torch.Generator().manual_seed(0)
    n_prompts, seq = 4, 30
    clean = torch.randint(100, dims.d_vocab, (n_prompts, seq), generator=g)
    corrupt = torch.randint(100, dims.d_vocab, (n_prompts, seq), generator=g)
    metric = metrics.logit_diff(torch.randint(100, dims.d_vocab, (n_prompts,), generator=g),
                                torch.randint(100, dims.d_vocab, (n_prompts, 1), generator=g))
    sites = head_sites(dims, pos=-1)

    def sweep():
        return activation_patch(model, sites, clean, corrupt, metric)

    def timed(label: str) -> tuple[float, float, Any]:  # prints as it goes: a compile that never ends still reports
        t, c = time.perf_counter(), time.process_time()
        out = sweep()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        print(f"compile section: {label}: {wall:.1f} s wall, {cpu:.1f} s CPU, load {os.getloadavg()}", flush=True)
        return wall, cpu, out

    eager_first, eager_first_cpu, eager_effects = timed("eager sweep 1")
    eager_second, eager_second_cpu, _ = timed("eager sweep 2")
    plain_forward = model.forward
    model.forward = torch.compile(plain_forward)
    try:
        compiled_first, compiled_first_cpu, compiled_effects = timed("compiled sweep 1 (compilation included)")
        compiled_second, compiled_second_cpu, _ = timed("compiled sweep 2")
    finally:
        model.forward = plain_forward
    return {"sweep": f"{len(sites)} head variants x {n_prompts} prompts x {seq} tokens, last position, prefix-shared",
            "eager_first_s": eager_first, "eager_second_s": eager_second, "compiled_first_s": compiled_first,
            "compiled_second_s": compiled_second, "cpu_s": {"eager_first": eager_first_cpu, "eager_second": eager_second_cpu,
                                                            "compiled_first": compiled_first_cpu, "compiled_second": compiled_second_cpu}, "max_abs_effect_diff": float((eager_effects - compiled_effects).abs().max()),
            "sweeps_to_break_even": ((compiled_first - eager_second) / (eager_second - compiled_second)
                                     if compiled_second < eager_second else None)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", default=["lens", "hooks", "compile"], choices=["lens", "hooks", "compile"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="runs/bench_kernels")
    args = ap.parse_args(argv)
    model, tok, _ = load_model("smollm2-135m-instruct")
    result: dict[str, Any] = {"config": vars(args), "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                                                 "loadavg_start": os.getloadavg(), "versions": package_versions()}}
    for name in args.only:
        start, cpu0 = time.perf_counter(), time.process_time()
        result[name] = {"lens": bench_lens, "hooks": bench_hooks, "compile": bench_compile}[name](model, tok, args)
        wall = time.perf_counter() - start
        result[name + "_conditions"] = {"loadavg_end": os.getloadavg(), "cpu_over_wall": (time.process_time() - cpu0) / wall}
        print(name, result[name + "_conditions"])
        for key, value in result[name].items():
            print(" ", key, value if not isinstance(value, dict) else "")
            if isinstance(value, dict):
                for k2, v2 in value.items():
                    print("   ", k2, v2)
        atomic_write_json(Path(args.out) / "benchmark.json", result)
    return result


if __name__ == "__main__":
    main()
