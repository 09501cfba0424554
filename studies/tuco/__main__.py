"""``python -m studies.tuco --config tiny|default|full|PATH.json --out runs/tuco``."""

from __future__ import annotations

from studies.common import study_main
from studies.tuco.study import TucoStudyConfig, run


def report(record: dict) -> None:
    m = record["metrics"]
    t, mw, sw = m["tuco"], m["tuco"]["mann_whitney"], m["alpha_sweep"]
    print("\n| group | n | TuCo mean ± std | median |\n|---|---:|---:|---:|")
    for name in ("in_task", "unrelated"):
        g = t[name]
        print(f"| {name} | {g['n']} | {g['mean']:.4f} ± {g['std']:.4f} | {g['median']:.4f} |")
    print(f"\nMann-Whitney U = {mw['u']:.1f}, two-sided p = {mw['p_two_sided']:.3g}, "
          f"one-sided p (in-task > unrelated) = {mw['p_in_task_greater']:.3g}, P(in-task > unrelated) = {mw['common_language_effect']:.3f}")
    for c in ("ptc", "ftc"):
        n = t[f"norm_sum_{c}"]
        print(f"‖Σ{c.upper()}‖ in-task {n['in_task']['mean']:.2f} ± {n['in_task']['std']:.2f}, unrelated "
              f"{n['unrelated']['mean']:.2f} ± {n['unrelated']['std']:.2f}, U test two-sided p = {n['mann_whitney']['p_two_sided']:.3g}")
    print("\n| α | " + " | ".join(f"{a:g}" for a in sw["alphas"]) + " |\n|---|" + "---:|" * len(sw["alphas"]))
    print("| accuracy | " + " | ".join(f"{v:.3f}" for v in sw["accuracy"]) + " |")
    print(f"\nwall time {record['run_info']['wall_time_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    return study_main("tuco", __doc__, TucoStudyConfig.load, run, report, argv, out_help="results.json, figures/")


if __name__ == "__main__":
    raise SystemExit(main())
