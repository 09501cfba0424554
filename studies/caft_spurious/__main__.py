"""``python -m studies.caft_spurious --config default|PATH.json --out runs/caft_spurious``."""

from __future__ import annotations

from studies.caft_spurious.study import CheckConfig, run
from studies.common import study_main


def report(record: dict) -> None:
    for arm, m in record["metrics"].items():
        if isinstance(m, dict) and "heldout_acc" in m:
            print(f"{arm:<24} held-out accuracy {m['heldout_acc']:.3f}, OOD accuracy {m['ood_acc']:.3f}")
    print(f"wall time {record['run_info']['wall_time_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    return study_main("caft_spurious", __doc__, CheckConfig.load, run, report, argv, out_help="results.json, adapters per arm")


if __name__ == "__main__":
    raise SystemExit(main())
