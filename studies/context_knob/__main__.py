"""``python -m studies.context_knob --config tiny|default|full|PATH.json --out runs/context_knob``."""

from __future__ import annotations

import argparse
import sys

from studies.context_knob.study import ContextKnobConfig, run
from workbench.errors import WorkbenchError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.context_knob", description=__doc__)
    parser.add_argument("--config", default="default", help="tiny, default, full, or a path to a JSON config")
    parser.add_argument("--out", default="runs/context_knob", help="output folder (results.json, u.safetensors, figures/)")
    args = parser.parse_args(argv)
    try:
        record = run(ContextKnobConfig.load(args.config), args.out)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = record["metrics"]
    print("\n| held-out | context acc | prior acc | pair acc |\n|---|---:|---:|---:|")
    for name in ("before", "after"):
        a = m["accuracy"][name]
        print(f"| {name} fine-tuning | {a['context_accuracy']:.3f} | {a['prior_accuracy']:.3f} | {a['pair_accuracy']:.3f} |")
    ls = m["layer_search"]
    print(f"\nlayer window {ls['lo']}..{ls['hi']} of {ls['n_layers']} ({ls['n_evaluations']} evaluations, "
          f"{ls['n_forward_passes']} forward passes); DAS layer {m['das']['layer']}")
    print("\n| model | interchange u | random | none | AUC | Cohen's d | context rate, prior end -> context end |\n|---|---:|---:|---:|---:|---:|---|")
    for name in ("tuned", "untuned"):
        i, s, e = m["interchange_accuracy"][name], m["separation"][name], m["steering"]["ends"][name]
        print(f"| {name} | {i['u']:.3f} | {i['random']:.3f} | {i['none']:.3f} | {s['auc']:.3f} | {s['cohens_d']:.2f} | "
              f"{e['context_rate_at_prior_end']:.3f} -> {e['context_rate_at_context_end']:.3f} |")
    print(f"\nwall time {record['run_info']['wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
