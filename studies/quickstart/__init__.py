"""The quickstart study (the main job): LoFiT on entity tracking, then a base-vs-tuned report."""

from studies.quickstart.figures import report_figures
from studies.quickstart.study import QuickstartConfig, run_quickstart

__all__ = ["QuickstartConfig", "report_figures", "run_quickstart"]
