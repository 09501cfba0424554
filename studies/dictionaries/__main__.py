"""``python -m studies.dictionaries --config tiny|default|full|PATH.json --out runs/dictionaries``."""

from __future__ import annotations

from studies.common import study_main
from studies.dictionaries.study import DictionariesConfig, run


def report(record: dict) -> None:
    from studies.dictionaries.figures import table_text

    print(table_text(record))
    print(f"wall time {record['run_info']['wall_time_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    return study_main("dictionaries", __doc__, DictionariesConfig.load, run, report, argv,
                      out_help="corpus.jsonl, runs/, dictionaries/, edges/, results.json, table.md, figures/")


if __name__ == "__main__":
    raise SystemExit(main())
