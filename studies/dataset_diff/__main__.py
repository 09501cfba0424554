"""``python -m studies.dataset_diff --config tiny|default|PATH.json --out runs/dataset_diff``."""

from __future__ import annotations

from studies.common import study_main
from studies.dataset_diff.study import ModelDiffConfig, run


def report(record: dict) -> None:
    m = record["metrics"]
    print(f"\nmean KL {m['kl']['mean_per_token']:.4g} nats/token over {m['n_tokens']} tokens ({m['n_rows']} rows)")
    print("tokens rising most (mean Δp): " + ", ".join(repr(r["token"]) for r in m["mining"]["rising_by_prob"][:10]))
    for p in m["adl"]["by_position"]:
        st = p["steering"]
        print(f"ADL δ_{p['position']} logit lens: " + ", ".join(repr(r["token"]) for r in p["lens"]["positive"][:8])
              + ("" if st is None else f"; steering α {st['chosen_alpha']}"))
    print(f"wall time {record['run_info']['wall_time_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    return study_main("dataset_diff", __doc__, ModelDiffConfig.load, run, report, argv, out_help="results.json, figures/, report.html")


if __name__ == "__main__":
    raise SystemExit(main())
