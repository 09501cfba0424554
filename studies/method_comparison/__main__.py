"""``python -m studies.method_comparison --config tiny|default|full --out runs/method_comparison``."""

from __future__ import annotations

from studies.common import study_main
from studies.method_comparison.study import StudyConfig, markdown_table, run


def report(record: dict) -> None:
    print(markdown_table(record["metrics"]["table"]))


def main(argv: list[str] | None = None) -> int:
    return study_main("method_comparison", __doc__, StudyConfig.load, run, report, argv, out_help="results.json, figures/, runs/ (a rerun resumes)")


if __name__ == "__main__":
    raise SystemExit(main())
