"""``python -m studies.diffing_benchmark --config tiny|default|full|PATH.json --out runs/diffing_benchmark``."""

from __future__ import annotations

from studies.common import study_main
from studies.diffing_benchmark.study import BenchmarkConfig, run


def report(record: dict) -> None:
    from studies.diffing_benchmark.figures import table_text

    print(table_text(record))
    print(f"wall time {record['run_info']['wall_time_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    return study_main("diffing_benchmark", __doc__, BenchmarkConfig.load, run, report, argv,
                      out_help="data/, corpus.jsonl, runs/, diffs/, results.json, table.md, figures/")


if __name__ == "__main__":
    raise SystemExit(main())
