"""GPU benchmark of every Triton kernel in ``kernels/`` against its eager torch reference, on CUDA only.

Speed depends on shapes, not weight values, and the GPU machine is offline: each model is randomly initialised
(seed 0, bf16, on the GPU) from its published config (:data:`studies.benchmarks.method_steps.PUBLISHED`).
For each kernel and shape the script first checks equality with the eager reference, then times both:
``--warmup`` untimed calls, then the median of ``--repeats`` calls timed with CUDA events (ms).

* ``logit_lens``  (:mod:`workbench_kernels.triton_lens`): the streaming top-5 lens (+ a target token's probability) of
  every layer's residual output at 30 and 256 positions. Eager = :func:`workbench_kernels.logit_lens.lens_topk` on the GPU
  (cuBLAS bf16 matmul, ``topk`` and ``logsumexp``, all rows in one chunk; and 1024-row chunks). Equality:
  against an fp32 reference, the kernel's probabilities of its own top ids, the log-sum-exp and the target's.

A Triton CAFT projection ablation was measured here too and deleted: 1.8-2.0x on the op (forward + backward) but
no gain on a CAFT(LoFiT) training step (0.86-1.38x across runs, i.e. noise); numbers in ``kernels/README.md``.

Without CUDA (or without Triton) it prints why and exits 0, measuring nothing.

Run:  python3 -m studies.benchmarks.gpu_kernels [--out $OUT/gpu_kernels.json] [--repeats 20] [--configs qwen2.5-0.5b llama-3.2-1b]
Imports only torch, transformers, triton, numpy, safetensors, jaxtyping, peft, accelerate and this repository
(no transformer_lens, nnsight or streamlit: ``tests/test_kernels_gpu.py`` checks it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from workbench_kernels import triton_lens
from workbench_kernels.logit_lens import lens_topk
from studies.benchmarks.method_steps import PUBLISHED


def cuda_ms(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
    """Median over ``repeats`` calls of ``fn`` (after ``warmup`` calls), CUDA-event time in ms."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def random_model(name: str) -> torch.nn.Module:
    """A randomly initialised bf16 model of ``name``'s published config, built on the GPU (seed 0)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(PUBLISHED[name])
    cfg = AutoConfig.for_model(spec.pop("model_type"), **{k: v for k, v in spec.items() if k != "architectures"})
    torch.manual_seed(0)
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa").eval()


@torch.no_grad()
def bench_lens(model: torch.nn.Module, name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    from workbench.architecture import final_norm, logit_softcap, unembedding

    norm, head, cap = final_norm(model), unembedding(model), logit_softcap(model)
    w = head.weight
    out = []
    for pos in (30, 256):
        ids = torch.randint(1, w.shape[0], (1, pos), generator=torch.Generator().manual_seed(0)).cuda()
        hs = model(ids, output_hidden_states=True).hidden_states[1:]  # each layer's output (the last is normed: fine)
        rows = torch.cat(hs).flatten(0, 1).contiguous()  # [n_layers * pos, d_model]
        target = torch.randint(0, w.shape[0], (rows.shape[0],), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
        k = 5
        ids_t, probs_t, tp_t = lens_topk(norm, head, rows, k=k, target=target, cap=cap, use_triton=True)
        # fp32 reference (the kernel accumulates in fp32 and does not round logits to bf16)
        x32 = norm(rows).float()
        ref = x32 @ w.float().T
        ref = ref if cap is None else cap * torch.tanh(ref / cap)
        lse = ref.logsumexp(-1)
        logp_ref_at = ref.gather(-1, ids_t) - lse[:, None]
        logp_top_ref = ref.topk(k, -1).values - lse[:, None]
        logp_t_ref = ref.gather(-1, target[:, None])[:, 0] - lse
        # log-probability errors (nats): a random model's probabilities are ~1/d_vocab, so absolute ones say nothing
        err = {"logp_at_kernel_ids_nats": float((probs_t.log() - logp_ref_at).abs().max()),
               "logp_top_vs_ref_top_nats": float((probs_t.log() - logp_top_ref).abs().max()),
               "logp_target_nats": float((tp_t.log() - logp_t_ref).abs().max()),
               "ids_equal_fraction": float((ids_t == ref.topk(k, -1).indices).float().mean())}
        ok = max(v for key, v in err.items() if key.endswith("nats")) < 1e-3
        del ref, x32
        eager_all = cuda_ms(lambda: lens_topk(norm, head, rows, k=k, target=target, cap=cap, rows_per_chunk=rows.shape[0],
                                            vocab_per_chunk=None),
                            args.warmup, args.repeats)
        eager_1024 = cuda_ms(lambda: lens_topk(norm, head, rows, k=k, target=target, cap=cap, rows_per_chunk=1024,
                                             vocab_per_chunk=None),
                             args.warmup, args.repeats)
        kernel = cuda_ms(lambda: lens_topk(norm, head, rows, k=k, target=target, cap=cap, use_triton=True), args.warmup, args.repeats)
        eager = min(eager_all, eager_1024)
        out.append({"kernel": "logit_lens", "model": name, "shape": f"{len(hs)} layers x {pos} pos, vocab {w.shape[0]}, k={k}",
                    "eager_ms": eager, "eager_all_rows_ms": eager_all, "eager_1024_rows_ms": eager_1024, "triton_ms": kernel,
                    "speedup": eager / kernel, "equal": ok, "errors": err})
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| kernel | model | shape | eager (ms) | triton (ms) | speed-up | equal |", "|---|---|---|---:|---:|---:|---|"]
    lines += [f"| {r['kernel']} | {r['model']} | {r['shape']} | {r['eager_ms']:.3f} | {r['triton_ms']:.3f} | "
              f"{r['speedup']:.2f}x | {'yes' if r['equal'] else 'NO'} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_out = Path(os.environ["OUT"]) / "gpu_kernels.json" if os.environ.get("OUT") else Path("runs/gpu_kernels.json")
    ap.add_argument("--out", type=Path, default=default_out)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=["qwen2.5-0.5b", "llama-3.2-1b"], choices=sorted(PUBLISHED))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: the GPU kernel benchmark needs one; nothing measured (exit 0)")
        return None
    if not triton_lens.available():
        print("triton is not importable: the Triton kernels cannot run; nothing measured (exit 0)")
        return None
    t0 = time.perf_counter()
    import transformers
    import triton

    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                              "transformers": transformers.__version__, "python": sys.version.split()[0],
                              "timing": f"CUDA events, {args.warmup} warm-ups, median of {args.repeats}", "rows": [], "failed": []}
    for name in args.configs:
        model = random_model(name)
        for bench in (bench_lens,):
            try:
                result["rows"] += bench(model, name, args)
            except Exception as exc:  # one kernel failing must not hide the others' numbers
                result["failed"].append(f"{bench.__name__} on {name}: {type(exc).__name__}: {exc}")
                print(result["failed"][-1], file=sys.stderr)
            torch.cuda.empty_cache()
        del model
        torch.cuda.empty_cache()
    result["wall_s"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(table(result["rows"]))
    for f in result["failed"]:
        print("FAILED:", f)
    print(f"wrote {args.out} ({result['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
