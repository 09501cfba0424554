"""``python -m studies.quickstart --config tiny|default|PATH.json --out runs/quickstart`` (also ``workbench quickstart``
and ``make demo``): LoFiT on entity tracking through the train job, and a base-vs-tuned report. An existing ``--out``
folder resumes the training from its checkpoints."""

from __future__ import annotations

from studies.common import study_main
from studies.quickstart.study import QuickstartConfig, run
from studies.quickstart.summary import print_summary


def main(argv: list[str] | None = None) -> int:
    return study_main("quickstart", __doc__, QuickstartConfig.load, run, print_summary, argv,
                      out_help="results.json, report.html, figures/, adapter/, train/ checkpoints")


if __name__ == "__main__":
    raise SystemExit(main())
