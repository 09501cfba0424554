"""``python -m studies.entity_tracking --config tiny|default|full|PATH.json --out runs/entity_tracking``."""

from __future__ import annotations

from studies.common import study_main
from studies.entity_tracking.study import EntityTrackingStudyConfig, run


def report(record: dict) -> None:
    m = record["metrics"]
    print("\n| model | accuracy among objects | logit diff (nats) | faithfulness of base circuit | random circuits |")
    print("|---|---:|---:|---:|---:|")
    for name, a in m["accuracy"].items():
        f = m["faithfulness"][name]
        rnd = [v for v in f["random_faithfulness"] if v is not None]
        fa = f["faithfulness"]
        print(f"| {name} | {a['accuracy_among_objects']:.3f} | {a['logit_difference']:.2f} | "
              f"{'n/a' if fa is None else f'{fa:.2f}'} | {sum(rnd) / len(rnd) if rnd else float('nan'):.2f} |")
    for name, c in m["cmap"].items():
        print(f"\nCMAP {name} -> base (accuracy; share of gap recovered): base {c['base_score']:.3f}, tuned {c['tuned_score']:.3f}")
        gain = c["tuned_score"] > c["base_score"]
        for g, v in c["patched"].items():
            share = c["recovered"][g]
            note = f"{share:.0%}" if gain and share is not None else "tuned is no better: no gain to recover"
            print(f"  {g}: {v:.3f} ({note})")
    runs = [(name, "base", g) for name, g in m["dcm"].items()]
    runs += [(name, name, g) for name, g in m.get("dcm_own_circuit", {}).items()]
    for name, circuit_of, groups in runs:
        kinds = list(next(iter(groups.values()), {}))
        print(f"\nDCM on {name}, {circuit_of} circuit (heads of each group that carry the desideratum; "
              "accuracy of the rounded mask)")
        print("| group | " + " | ".join(kinds) + " |")
        print("|---|" + "---:|" * len(kinds))
        for g, by_kind in groups.items():
            cells = [f"{r['n_selected']}/{len(r['heads'])}, acc {r['accuracy']:.2f}" for r in by_kind.values()]
            print(f"| {g} | " + " | ".join(cells) + " |")
    a = m["attribution_vs_exact"]
    if a:
        passes = f" in {a['exact_forward_passes']} forward passes" if "exact_forward_passes" in a else ""
        print(f"\nattribution vs exact patching (base, per head): Pearson r = {a['pearson_r']:.3f}; "
              f"exact {a['exact_s']:.0f} s{passes}, attribution {a['attribution_s']:.1f} s")
    print(f"\nwall time {record['run_info']['wall_time_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    return study_main("entity_tracking", __doc__, EntityTrackingStudyConfig.load, run, report, argv)


if __name__ == "__main__":
    raise SystemExit(main())
