"""CAFT on the spurious-cue task (Casademunt et al. 2025, §5): base, standard tuning, test-time ablation, CAFT, random CAFT."""

from studies.caft_spurious.study import CheckConfig, run

__all__ = ["CheckConfig", "run"]
