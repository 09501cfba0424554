"""``python -m studies.context_knob --config tiny|default|full|PATH.json --out runs/context_knob``."""

from __future__ import annotations

from studies.common import study_main
from studies.context_knob.study import ContextKnobConfig, run


def report(record: dict) -> None:
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


def main(argv: list[str] | None = None) -> int:
    return study_main("context_knob", __doc__, ContextKnobConfig.load, run, report, argv, out_help="results.json, u.safetensors, figures/")


if __name__ == "__main__":
    raise SystemExit(main())
