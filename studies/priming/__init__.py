"""Knowledge-priming study (Sun et al., arXiv 2504.09522, 2025)."""

from studies.priming.figures import figures
from studies.priming.study import PrimingStudyConfig, run

__all__ = ["PrimingStudyConfig", "figures", "run"]
