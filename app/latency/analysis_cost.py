"""Server-side cost of a fresh prompt, old path against new, side by side in one process (CPU seconds and wall).

    python -m app.latency.analysis_cost [--base smollm2-135m-instruct] [--tuned runs/<run>] [--repeats 3]

*old*: the analysis as the app ran it before the lens window (the logit lens over the last 32 positions inside
:func:`app.views.analysis.analyse_prompt`). *new*: the analysis without a lens, then what the default predictions view
computes: the lens window over the last :data:`app.views.lens.LENS_WINDOW` positions, every layer at the last position,
and the tracked tokens. Both on the same prompts, alternating, so the machine's load hits both alike; the CPU seconds
(``time.process_time``) are much less sensitive to other jobs than the wall clock. Prints a Markdown table and the load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

PROMPT = "The apple is in Box F, the key is in Box C, the coin is in Box A. Box C contains the"


def _timed(fn) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default="smollm2-135m-instruct")
    p.add_argument("--tuned", required=True, help="run folder or model")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    from app.views.analysis import analyse_prompt
    from app.views.lens import (
        LENS_WINDOW,
        default_tokens,
        lens_at,
        lens_window,
        tracked_logits,
    )
    from workbench.models.tuned import load_pair

    pair = load_pair(args.base, args.tuned, "cpu").pair
    analyse_prompt(pair, "Hello")  # boot the bridges

    def new(prompt: str) -> None:
        a = analyse_prompt(pair, prompt, lens_positions=0)
        lens_window(pair, a, max(0, a.n_pos - LENS_WINDOW), a.n_pos)
        lens_at(pair, a, -1, torch.tensor([int(a.top_ids[r][-1][0]) for r in ("base", "tuned")]))
        tracked_logits(pair, a, torch.tensor(default_tokens(a)))

    rows: dict[str, list[tuple[float, float]]] = {"old: analysis with the lens over 32 positions": [],
                                                  f"new: analysis, then lens window {LENS_WINDOW} + last position + tracked tokens": []}
    load = [os.getloadavg()[0]]
    def old(prompt: str) -> None:
        analyse_prompt(pair, prompt, lens_positions=32)

    for r in range(args.repeats):
        for name, times in rows.items():
            prompt = f"Take {r} {name[:3]}. {PROMPT}"  # distinct text: nothing cached
            run = old if name.startswith("old") else new
            times.append(_timed(lambda run=run, prompt=prompt: run(prompt)))
        load.append(os.getloadavg()[0])
    n_tokens = pair.tokenize([f"Take 0 old. {PROMPT}"])[0].shape[1]
    print(f"| path ({n_tokens}-token prompt) | CPU s, median | wall s, median |\n|---|---|---|")
    for name, xs in rows.items():
        print(f"| {name} | {statistics.median(x[0] for x in xs):.2f} | {statistics.median(x[1] for x in xs):.2f} |")
    print(f"load average (1 min) during the run: {min(load):.1f}–{max(load):.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
