"""The quickstart study (the main job): LoFiT on entity tracking, then a base-vs-tuned report."""

from studies.quickstart.study import QuickstartConfig, report_figures, run_quickstart

__all__ = ["QuickstartConfig", "report_figures", "run_quickstart"]
