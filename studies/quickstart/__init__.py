"""The quickstart study (the main job): LoFiT on entity tracking through the train job, then a base-vs-tuned report."""

from studies.quickstart.figures import report_figures
from studies.quickstart.study import QuickstartConfig, run, run_quickstart
from studies.quickstart.summary import print_summary, summary_lines

__all__ = ["QuickstartConfig", "print_summary", "report_figures", "run", "run_quickstart", "summary_lines"]
