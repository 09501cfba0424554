"""Benchmark: forward passes and training steps on our hook path vs TransformerLens and peft LoRA.

What is measured (one model, one seeded batch of random token ids ``batch x seq``; the answer is the
last token, so labels are -100 everywhere except the last position):

1. ``plain_forward``          plain transformers forward, ``torch.no_grad``
2. ``bridge_forward``         TransformerLens ``TransformerBridge`` forward ``bridge(input_ids)`` (no_grad)
   ``bridge_run_with_cache``  ``bridge.run_with_cache(input_ids)``: every hook point cached (no_grad)
3. ``lofit_forward``          our hook path: the HF forward with LoFiT offsets attached (27 heads, no_grad)
4. ``lofit_step``             LoFiT training step: frozen model, forward with attach, answer loss,
                              backward, grad clipping (1.0), AdamW step over the 27 x d_head offsets
5. ``lora_step``              peft LoRA (r=8, alpha=16, q/k/v/o_proj) training step on the same batch and loss

How:
* Time: all measurements run in ONE process on the same batch. Each gets 2 warm-up iterations, then
  ``--repeats`` timed iterations (``time.perf_counter``; ``cuda.synchronize`` around each on a GPU);
  the median is reported. The bridge and LoRA each get their own freshly loaded copy of the model
  (booting a bridge and ``get_peft_model`` both modify the HF model in place).
* Memory: each measurement is then re-run in a fresh subprocess (``--only NAME``) that loads what it
  needs, records its RSS, resets the kernel's peak-RSS counter (``/proc/self/clear_refs`` <- 5; if that
  is refused, the ``ru_maxrss`` peak, which then includes loading) and runs warm-up + 1 iterations. It
  reports the peak RSS (VmHWM) and the increase over the loaded baseline. On CUDA the same is done
  with ``torch.cuda.max_memory_allocated``.

Run:  python -m studies.benchmarks.hooks_and_steps [--out runs/bench] [--repeats 5] [--batch 8] [--seq 64]
Writes ``<out>/benchmark.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import transformers

from workbench.artifacts import atomic_write_json, package_versions
from workbench.data import Example, collate
from workbench.hooked import to_bridge
from workbench.losses import answer_loss
from workbench.methods.lofit import LofitConfig, LofitOffsets
from workbench.models import load_model

NAMES = ("plain_forward", "bridge_forward", "bridge_run_with_cache", "lofit_forward", "lofit_step", "lora_step")
LABELS = {
    "plain_forward": "plain transformers forward",
    "bridge_forward": "TransformerBridge forward",
    "bridge_run_with_cache": "TransformerBridge run_with_cache (all hooks)",
    "lofit_forward": "our hook path: HF forward + LoFiT attached",
    "lofit_step": "LoFiT training step (fwd+bwd+AdamW)",
    "lora_step": "LoRA (peft, r=8, q/k/v/o) training step",
}
ROLE = {"bridge_forward": "bridge", "bridge_run_with_cache": "bridge", "lora_step": "peft"}  # else "base"
WARMUP, N_LOFIT_HEADS, MARK = 2, 27, "BENCH_JSON "
CUDA = torch.cuda.is_available()


def sync() -> None:
    torch.cuda.synchronize() if CUDA else None


def make_batch(d_vocab: int, batch: int, seq: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Seeded random prompts of ``seq - 1`` tokens plus a one-token answer -> (ids, mask, labels)."""
    ids = torch.randint(1, d_vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
    return collate([Example(tuple(r[:-1].tolist()), (int(r[-1]),)) for r in ids], pad_id=0)


def lofit_heads(n_layers: int, n_heads: int, k: int = N_LOFIT_HEADS, seed: int = 0) -> list[list[int]]:
    flat = torch.randperm(n_layers * n_heads, generator=torch.Generator().manual_seed(seed))[:k].sort().values
    return [[int(i) // n_heads, int(i) % n_heads] for i in flat]


def get_model(state: dict[str, Any], role: str, model_name: str) -> Any:
    """A model copy per role: "base" (HF), "bridge" (TransformerBridge), "peft" (peft-wrapped HF, with a LoRA)."""
    if role not in state:
        model, tok, info = load_model(model_name)
        state.setdefault("info", info)
        if role == "bridge":
            model = to_bridge(model, tok, info.path)
        elif role == "peft":
            from peft import LoraConfig, get_peft_model

            lcfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
            model = get_peft_model(model, lcfg)
            model.eval()
        state[role] = model
    return state[role]


def build(name: str, state: dict[str, Any], args: argparse.Namespace) -> Callable[[], None]:
    """Load what ``name`` needs (cached in ``state``) and return one iteration of it as a closure."""
    model = get_model(state, ROLE.get(name, "base"), args.model)
    info = state["info"]
    device = next(model.parameters()).device
    ids, mask, labels = (t.to(device) for t in make_batch(info.d_vocab, args.batch, args.seq))
    if name in ("plain_forward", "bridge_forward"):
        return torch.no_grad()(lambda: model(ids) if name == "bridge_forward" else model(input_ids=ids))
    if name == "bridge_run_with_cache":
        return torch.no_grad()(lambda: model.run_with_cache(ids))
    if name.startswith("lofit"):
        cfg = LofitConfig(top_k_heads=N_LOFIT_HEADS, heads=lofit_heads(info.n_layers, info.n_heads))
        lofit = LofitOffsets(cfg, info.to_dict(), generator=torch.Generator().manual_seed(0)).to(device)
        state.setdefault("counts", {})["lofit"] = sum(p.numel() for p in lofit.parameters() if p.requires_grad)
        if name == "lofit_forward":
            def fwd() -> None:
                with torch.no_grad(), lofit.attach(model):
                    model(input_ids=ids)
            return fwd
        for p in model.parameters():
            p.requires_grad_(False)
        params = list(lofit.parameters())
    else:  # lora_step: peft already froze the base weights
        params = [p for p in model.parameters() if p.requires_grad]
        state.setdefault("counts", {})["lora"] = sum(p.numel() for p in params)
        lofit = None
    opt = torch.optim.AdamW(params, lr=1e-2)

    def step() -> None:
        with lofit.attach(model) if lofit is not None else contextlib.nullcontext():
            loss = answer_loss(model(input_ids=ids, attention_mask=mask).logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return step


def time_it(fn: Callable[[], None], repeats: int) -> tuple[list[float], list[float]]:
    """Wall times and process CPU times (all threads; CPU/wall far below the thread count = contention)."""
    for _ in range(WARMUP):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def _status_kib(key: str) -> int:  # /proc/self/status values are in kB
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def measure_memory(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """(In a fresh subprocess.) Peak memory of warm-up + 1 iterations, and its increase over loaded."""
    fn = build(name, {}, args)
    gc.collect()
    sync()
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
        base, method = torch.cuda.memory_allocated() / 2**20, "cuda.max_memory_allocated"
    else:
        base, method = _status_kib("VmRSS") / 1024, "VmHWM after clear_refs"
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
        except OSError:
            method = "ru_maxrss (includes loading)"
    for _ in range(WARMUP + 1):
        fn()
    sync()
    peak = (torch.cuda.max_memory_allocated() / 2**20 if CUDA else _status_kib("VmHWM") / 1024 if method.startswith("VmHWM")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"peak_mib": peak, "loaded_mib": base, "delta_mib": peak - base, "method": method}


def run_subprocess(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "studies.benchmarks.hooks_and_steps", "--only", name,
           "--batch", str(args.batch), "--seq", str(args.seq), "--model", args.model]
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory subprocess for {name} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK):])


def table(results: dict[str, Any], counts: dict[str, int], mem_label: str) -> str:
    plain, lora = results["plain_forward"]["median_ms"], results["lora_step"]["median_ms"]
    rows = [f"| measurement | median time (ms) | ratio | {mem_label} (MiB) | Δ over loaded (MiB) | CPU/wall |",
            "|---|---:|---:|---:|---:|---:|"]
    for name in NAMES:
        r = results[name]
        ratio = ("1.00× (ref)" if name == "lora_step" else f"{r['median_ms'] / lora:.2f}× LoRA step") if name.endswith("step") \
            else f"{r['median_ms'] / plain:.2f}× plain fwd"
        rows.append(f"| {LABELS[name]} | {r['median_ms']:.1f} | {ratio} | {r['peak_mib']:.0f} | {r['delta_mib']:.0f} | {r['cpu_over_wall']:.2f} |")
    lo, lr = counts["lofit"], counts["lora"]
    rows.append(f"\nTrainable parameters: LoFiT {lo:,} ({N_LOFIT_HEADS} heads × d_head) vs LoRA {lr:,} "
                f"→ LoRA/LoFiT = {lr / lo:.0f}×")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--only", choices=NAMES, help=argparse.SUPPRESS)  # internal: memory subprocess
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.only:
        print(MARK + json.dumps(measure_memory(args.only, args)), flush=True)
        return None

    started, load_before = time.time(), os.getloadavg()
    state: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for name in NAMES:  # timing: one process, same batch
        wall, cpu = time_it(build(name, state, args), args.repeats)
        results[name] = {"median_ms": 1e3 * statistics.median(wall), "times_ms": [1e3 * t for t in wall],
                         "cpu_over_wall": statistics.median(c / w for c, w in zip(cpu, wall))}
        print(f"{name}: {results[name]['median_ms']:.1f} ms (CPU/wall {results[name]['cpu_over_wall']:.2f})", file=sys.stderr, flush=True)
    info, counts = state["info"], state["counts"]
    del state
    gc.collect()
    for name in NAMES:  # memory: one fresh subprocess each
        mem = run_subprocess(name, args)
        results[name].update({k: mem[k] for k in ("peak_mib", "loaded_mib", "delta_mib", "method")})
    mem_label = "peak CUDA alloc" if CUDA else "peak RSS"
    md = table(results, counts, mem_label)
    print(md)
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {**{k: v for k, v in vars(args).items() if k != "only"}, "warmup": WARMUP, "lofit_heads": N_LOFIT_HEADS},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "device": torch.cuda.get_device_name() if CUDA else "cpu",
                    "loadavg_before_after": [load_before, os.getloadavg()],
                    "versions": package_versions()},
        "model": info.to_dict(),
        "trainable_params": {**counts, "lora_over_lofit": counts["lora"] / counts["lofit"]},
        "ratios": {n: results[n]["median_ms"] / results["lora_step" if n.endswith("step") else "plain_forward"]["median_ms"] for n in NAMES},
        "results": results,
        "memory_metric": mem_label,
        "wall_time_s": round(time.time() - started, 1),
        "table_markdown": md,
    }
    atomic_write_json(Path(args.out) / "benchmark.json", record)
    print(f"\nwrote {Path(args.out) / 'benchmark.json'}", file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
