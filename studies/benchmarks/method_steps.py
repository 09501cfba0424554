"""Benchmark: our hooks' forward throughput and every method's training step, each against its lower bound.

Measured in ONE process on one seeded batch (``batch x seq`` random token ids, the last token the answer):

* ``plain_forward``      plain transformers forward (``no_grad``): tokens/s, the reference of the forwards
* ``record_forward``     the same forward with our :func:`workbench.hooked.record` reading every
                         ``blocks.{l}.hook_resid_post`` (the hook path the probes use)
* ``lofit_forward``      the same forward with LoFiT offsets attached (10 % of heads)
* ``fwd_bwd_frozen``     forward + backward of the answer loss with every weight frozen, gradients flowing
                         to the activations only: the lower bound of a step that trains a few parameters
                         inside the network (LoFiT, NeFT, LoRA)
* ``fwd_bwd_all``        forward + backward with every weight requiring a gradient: the lower bound of a
                         full fine-tuning step
* ``<method>_step``      one training step of each registered method as :func:`workbench.train.fit` takes it
                         (attach, answer loss, backward, clip, AdamW) — lofit, neft (1 % budget, random
                         neurons), lora (our peft-backed LoRA, r=8, q/k/v/o), full

Time: 2 warm-ups, then the median of ``--repeats``. Memory: each measurement again in a fresh subprocess,
the peak over warm-up + 1 iterations (peak RSS via VmHWM on CPU, ``max_memory_allocated`` on CUDA) minus
what was resident once the model was loaded. ``--random-config qwen2.5-0.5b|llama-3.2-1b`` builds a randomly
initialised model from that model's published config (speed depends on shapes, not weight values): use it on
an offline GPU machine, where real weights cannot be fetched.

Run:  python -m studies.benchmarks.method_steps [--out runs/bench_methods] [--repeats 5] [--batch 8] [--seq 64]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from studies.benchmarks.hooks_and_steps import CUDA, MARK, WARMUP, _status_kib, lofit_heads, make_batch, sync, time_it
from workbench.artifacts import atomic_write_json, package_versions
from workbench.losses import answer_loss
from workbench.methods import get_method

FORWARDS = ("plain_forward", "record_forward", "lofit_forward")
BOUNDS = ("fwd_bwd_frozen", "fwd_bwd_all")
STEPS = ("lofit_step", "neft_step", "lora_step", "full_step")
NAMES = FORWARDS + BOUNDS + STEPS
#: Published configs (Hugging Face ``config.json`` of each model), for randomly initialised copies.
PUBLISHED = {
    "qwen2.5-0.5b": dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                         max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "llama-3.2-1b": dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=2048, intermediate_size=8192,
                         num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
}


def load(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model, dims dict) of the real registry model, or a random one from a published config."""
    if args.random_config:
        from transformers import AutoConfig, AutoModelForCausalLM

        spec = dict(PUBLISHED[args.random_config])
        cfg = AutoConfig.for_model(spec.pop("model_type"), **{k: v for k, v in spec.items() if k != "architectures"})
        torch.manual_seed(0)
        device = "cuda" if CUDA else "cpu"
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, args.dtype)).to(device).eval()
        c = model.config
        d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        dims = dict(n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads,
                    d_head=d_head, d_model=c.hidden_size, d_mlp=c.intermediate_size, d_vocab=c.vocab_size)
        return model, dims
    from workbench.models import load_model

    model, _, info = load_model(args.model, dtype=args.dtype)
    return model, info.to_dict()


def method_config(name: str, dims: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's setting of a method that picks heads (10 % of them, spread) or neurons (1 % of the parameters,
    at random), told apart by its config's fields; ``{}`` (the defaults) for any other method."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(get_method(name).config_cls)}
    n_heads = max(1, round(0.1 * dims["n_layers"] * dims["n_heads"]))
    if {"heads", "top_k_heads"} <= fields:
        return {"top_k_heads": n_heads, "heads": lofit_heads(dims["n_layers"], dims["n_heads"], n_heads)}
    if "neurons" in fields:  # 1 % of the parameters as random neurons: each costs 3 * d_model parameters
        n_params = 12 * dims["n_layers"] * dims["d_model"] ** 2
        n = max(1, int(0.01 * n_params / (3 * dims["d_model"])))
        g = torch.Generator().manual_seed(0)
        flat = torch.randperm(dims["n_layers"] * dims["d_mlp"], generator=g)[:n].sort().values
        return {"neurons": [[int(i) // dims["d_mlp"], int(i) % dims["d_mlp"]] for i in flat]}
    return {}


def build(name: str, args: argparse.Namespace, out: dict[str, Any]) -> Callable[[], None]:
    """Load a fresh model for ``name`` and return one iteration as a closure (``out`` gets parameter counts)."""
    from workbench.hooked import record
    from workbench.sites import Site

    model, dims = load(args)
    device = next(model.parameters()).device
    ids, mask, labels = (t.to(device) for t in make_batch(dims["d_vocab"], args.batch, args.seq))
    if name == "plain_forward":
        return torch.no_grad()(lambda: model(input_ids=ids))
    if name == "record_forward":
        sites = [Site(layer, "hook_resid_post") for layer in range(dims["n_layers"])]

        def recorded() -> None:
            with torch.no_grad(), record(model, sites):
                model(input_ids=ids)
        return recorded
    method = name.removesuffix("_forward").removesuffix("_step")
    if name in BOUNDS:
        train_all = name == "fwd_bwd_all"
        for p in model.parameters():
            p.requires_grad_(train_all)
        emb = model.get_input_embeddings()

        def fwd_bwd() -> None:
            model.zero_grad(set_to_none=True)
            h = emb(ids) if train_all else emb(ids).detach().requires_grad_(True)
            answer_loss(model(inputs_embeds=h, attention_mask=mask).logits, labels).backward()
        return fwd_bwd
    spec = get_method(method)
    from workbench.config import config_from_dict

    inter = spec.intervention_cls(config_from_dict(spec.config_cls, method_config(method, dims)), dims)
    inter.bind(model)
    inter.to(device)
    params = [p for p in inter.parameters() if p.requires_grad]
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    out[method] = sum(p.numel() for p in params)
    if name == "lofit_forward":
        def fwd() -> None:
            with torch.no_grad(), inter.attach(model):
                model(input_ids=ids)
        return fwd
    opt = torch.optim.AdamW(params, lr=1e-3)

    def step() -> None:
        with inter.attach(model):
            loss = answer_loss(model(input_ids=ids, attention_mask=mask).logits, labels) + inter.regularization()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return step


def measure_memory(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """(In a fresh subprocess.) Peak memory of warm-up + 1 iterations minus the loaded model's."""
    fn = build(name, args, {})
    gc.collect()
    sync()
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _status_kib("VmRSS") / 1024
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
    for _ in range(WARMUP + 1):
        fn()
    sync()
    peak = torch.cuda.max_memory_allocated() / 2**20 if CUDA else _status_kib("VmHWM") / 1024
    return {"peak_mib": peak, "delta_mib": peak - base}


def _subprocess(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "studies.benchmarks.method_steps", "--only", name, "--batch", str(args.batch),
           "--seq", str(args.seq), "--model", args.model, "--dtype", args.dtype]
    if args.random_config:
        cmd += ["--random-config", args.random_config]
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory subprocess for {name} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK):])


def table(results: dict[str, Any], tokens: int, counts: dict[str, int]) -> str:
    ref = results["plain_forward"]["median_ms"]
    rows = ["| measurement | median (ms) | tokens/s | ratio | peak (MiB) | Δ over loaded (MiB) | trainable params |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name in NAMES:
        r = results[name]
        if name in FORWARDS:
            ratio = f"{ref / r['median_ms']:.2f}× plain fwd throughput"
        elif name in BOUNDS:
            ratio = f"{r['median_ms'] / ref:.2f}× plain fwd time"
        else:
            bound = "fwd_bwd_all" if name == "full_step" else "fwd_bwd_frozen"
            ratio = f"{r['median_ms'] / results[bound]['median_ms']:.2f}× {bound}"
        n = counts.get(name.removesuffix("_step")) if name in STEPS else None
        rows.append(f"| {name} | {r['median_ms']:.1f} | {tokens / r['median_ms'] * 1e3:,.0f} | {ratio} | "
                    f"{r.get('peak_mib', float('nan')):.0f} | {r.get('delta_mib', float('nan')):.0f} | {'' if n is None else f'{n:,}'} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_methods")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--random-config", choices=sorted(PUBLISHED))
    ap.add_argument("--no-memory", action="store_true", help="skip the per-measurement memory subprocesses")
    ap.add_argument("--only", choices=NAMES, help=argparse.SUPPRESS)  # internal: memory subprocess
    args = ap.parse_args(argv)
    if args.only:
        print(MARK + json.dumps(measure_memory(args.only, args)), flush=True)
        return None
    started = time.time()
    results: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for name in NAMES:
        wall, cpu = time_it(build(name, args, counts), args.repeats)
        results[name] = {"median_ms": 1e3 * statistics.median(wall), "times_ms": [1e3 * t for t in wall],
                         "cpu_over_wall": statistics.median(c / w for c, w in zip(cpu, wall))}
        gc.collect()
        print(f"{name}: {results[name]['median_ms']:.1f} ms", file=sys.stderr, flush=True)
    if not args.no_memory:
        for name in NAMES:
            results[name].update(_subprocess(name, args))
    md = table(results, args.batch * args.seq, counts)
    print(md)
    record = {"config": vars(args) | {"warmup": WARMUP},
              "machine": {"device": torch.cuda.get_device_name() if CUDA else "cpu", "cpu_count": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(), "loadavg": os.getloadavg(), "versions": package_versions()},
              "trainable_params": counts, "results": results, "table_markdown": md,
              "wall_time_s": round(time.time() - started, 1)}
    atomic_write_json(Path(args.out) / "benchmark.json", record)
    print(f"\nwrote {Path(args.out) / 'benchmark.json'}", file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
