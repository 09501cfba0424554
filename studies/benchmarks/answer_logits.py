"""Benchmark: a training step with the unembedding on the answer positions only (:func:`workbench.losses.sft_loss`)
against the same step on every position's logits (:func:`workbench.losses.answer_loss`, the path before), side by side.

Measured in ONE process, interleaved (old, new, old, new, ...) so both see the same machine load, on the real
SmolLM2-135M-Instruct, for the batches the studies train on:

* ``entity tracking``: 8 prompts of the entity-tracking task (3 boxes), one answer token each (LoFiT on every head,
  as the entity-tracking study's "boxes" model);
* ``arithmetic``: 8 two-digit sums, answers of 1–3 tokens (peft LoRA r=8 on every linear layer, as its "arithmetic" model);
* ``chat 64``: 8 random 64-token sequences whose last 8 tokens are the answer (LoRA r=8 on q/k/v/o).

For each: the median step time of both paths (forward, loss, backward, AdamW), their ratio, and the largest difference
between the two paths' losses and gradients on the first step (they compute the same function).

Run:  python -m studies.benchmarks.answer_logits [--out runs/bench_answer_logits] [--repeats 7]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from workbench.artifacts import atomic_write_json, package_versions
from workbench.data import Example, collate
from workbench.losses import answer_loss, sft_loss


def batches(tok, info) -> dict[str, tuple[list[Example], str, dict]]:
    """name -> (examples, method, method config)."""
    from workbench.tasks import arithmetic as ar
    from workbench.tasks import entity_tracking as et

    split = et.generate(tok, et.EntityTrackingConfig(n_boxes=3, n_train=8, n_heldout=1, seed=0), prepend_bos=info.prepend_bos)
    boxes = [Example(p.input_ids, (p.answer_token_id,)) for p in split.train[:8]]
    train, _ = ar.problems(ar.ArithmeticConfig(n_train=8, n_heldout=1, seed=0))
    sums = ar.to_examples(tok, train, info.prepend_bos)
    g = torch.Generator().manual_seed(0)
    chat = [Example(tuple(torch.randint(100, 40000, (56,), generator=g).tolist()), tuple(torch.randint(100, 40000, (8,), generator=g).tolist()))
            for _ in range(8)]
    every_linear = {"r": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    n_all = info.n_layers * info.n_heads
    return {"entity tracking": (boxes, "lofit", {"top_k_heads": n_all, "init_std": 0.0,
                                                     "heads": [[layer, head] for layer in range(info.n_layers) for head in range(info.n_heads)]}),
            "arithmetic": (sums, "lora", every_linear),
            "chat 64": (chat, "lora", {"r": 8})}


def make_step(model, info, examples, method: str, config: dict, pad_id: int, new: bool):
    """One training step as ``fit`` takes it, with the new (answer positions only) or old (every position) loss."""
    from workbench.config import config_from_dict
    from workbench.intervention import Intervention
    from workbench.methods import get_method

    spec = get_method(method)
    if spec.intervention_cls.bind is not Intervention.bind:  # its parameters live in the model it binds to (e.g. a
        model = copy.deepcopy(model)  # LoRA injects its adapters into it): each path trains its own copy
    torch.manual_seed(0)  # both paths start from the same parameters (LoRA's A is drawn at random)
    inter = spec.intervention_cls(config_from_dict(spec.config_cls, config), info.to_dict())
    inter.bind(model)
    params = [p for p in inter.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    ids, mask, labels = collate(examples, pad_id)

    def loss() -> torch.Tensor:
        with inter.attach(model):
            if new:
                return sft_loss(model, ids, mask, labels) + inter.regularization()
            return answer_loss(model(input_ids=ids, attention_mask=mask).logits, labels) + inter.regularization()

    def step() -> None:
        value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    def first_grads() -> tuple[float, list[torch.Tensor]]:
        opt.zero_grad(set_to_none=True)
        value = loss()
        value.backward()
        return float(value), [p.grad.clone() for p in params]

    return step, first_grads


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_answer_logits")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args(argv)
    from workbench.models import load_model

    started = time.time()
    model, tok, info = load_model(args.model)
    model.requires_grad_(False)
    pad = tok.pad_token_id or 0
    results: dict[str, Any] = {}
    for name, (examples, method, config) in batches(tok, info).items():
        old_step, old_grads = make_step(model, info, examples, method, config, pad, new=False)
        new_step, new_grads = make_step(model, info, examples, method, config, pad, new=True)
        lo, go = old_grads()  # the same function from the same parameters: equal losses and gradients
        ln, gn = new_grads()
        times: dict[str, list[float]] = {"old": [], "new": []}
        for i in range(args.repeats + 1):
            for label, fn in (("old", old_step), ("new", new_step)):
                t0 = time.perf_counter()
                fn()
                if i:  # the first round warms up
                    times[label].append(time.perf_counter() - t0)
        ids = collate(examples, pad)[0]
        r = {"method": method, "batch": list(ids.shape), "answer_tokens": sum(len(e.answer_ids) for e in examples),
             "old_ms": 1e3 * statistics.median(times["old"]), "new_ms": 1e3 * statistics.median(times["new"]),
             "loss_old": lo, "loss_new": ln, "max_abs_grad_diff": max(float((a - b).abs().max()) for a, b in zip(go, gn)),
             "max_abs_grad": max(float(a.abs().max()) for a in go), "times_s": times}
        r["speedup"] = r["old_ms"] / r["new_ms"]
        results[name] = r
        print(f"{name}: old {r['old_ms']:.0f} ms, new {r['new_ms']:.0f} ms ({r['speedup']:.2f}x); loss {lo:.6f} vs {ln:.6f}, "
              f"max |Δ grad| {r['max_abs_grad_diff']:.2e} (max |grad| {r['max_abs_grad']:.2e})", file=sys.stderr, flush=True)
    rows = ["| batch | method | shape (rows × tokens) | answer tokens | every position (ms) | answer positions (ms) | speed-up | "
            "loss, old / new | max abs grad diff |", "|---|---|---|---:|---:|---:|---:|---|---:|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['method']} | {r['batch'][0]} × {r['batch'][1]} | {r['answer_tokens']} | {r['old_ms']:.0f} | "
                    f"{r['new_ms']:.0f} | {r['speedup']:.2f}× | {r['loss_old']:.6f} / {r['loss_new']:.6f} | {r['max_abs_grad_diff']:.1e} |")
    md = "\n".join(rows)
    print(md)
    record = {"config": vars(args), "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                                 "loadavg": os.getloadavg(), "versions": package_versions()},
              "results": results, "table_markdown": md, "wall_time_s": round(time.time() - started, 1)}
    atomic_write_json(Path(args.out) / "benchmark.json", record)
    return record


if __name__ == "__main__":
    main()
