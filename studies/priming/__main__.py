"""``python -m studies.priming --config tiny|default|full|PATH.json --out runs/priming``."""

from __future__ import annotations

from studies.common import study_main
from studies.priming.study import PrimingStudyConfig, run


def report(record: dict) -> None:
    m = record["metrics"]
    sp = m["spearman_prior_vs_priming"]
    print(f"\nSpearman(log10 P before, log10 priming) = {sp['rho']:.3f}, p = {sp['p']:.3g}, n = {sp['n']}")
    th = m["threshold_1e-3"]
    print(f"mean log10 priming: P before < 1e-3: {th['mean_log10_priming_below']} (n={th['n_below']}); "
          f">= 1e-3: {th['mean_log10_priming_above']} (n={th['n_above']})")
    print("\n| arm | n | mean log10 priming ± s.e.m. | mean memorization | memorized (P>0.5) | median priming-ratio reduction |\n|---|---:|---:|---:|---:|---:|")
    for arm, a in m["arms"].items():
        red = a.get("median_priming_ratio_reduction")
        print(f"| {arm} | {a['n']} | {a['mean_log10_priming']:.2f} ± {a['sem_log10_priming']:.2f} | {a['mean_memorization']:.3f} | "
              f"{a['share_memorized']:.2f} | {'–' if red is None else f'{red:.0%}'} |")
    print(f"\nweights restored exactly: {m['weights_restored_exactly']}; wall time {record['run_info']['wall_time_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    return study_main("priming", __doc__, PrimingStudyConfig.load, run, report, argv, out_help="results.json, figures/")


if __name__ == "__main__":
    raise SystemExit(main())
