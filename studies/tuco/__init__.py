"""TuCo study (Nuti, Franzmeyer, Henriques, ICML 2025): tuning contribution in-task vs unrelated, α-sweep."""

from studies.tuco.figures import figures
from studies.tuco.study import TucoStudyConfig, run

__all__ = ["TucoStudyConfig", "figures", "run"]
