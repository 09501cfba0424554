"""Dataset-level model diff study (``workbench diff``; ``python -m studies.model_diff``)."""

from studies.model_diff.study import (
    ModelDiffConfig,
    check_before_load,
    plan_and_run,
    run,
)

__all__ = ["ModelDiffConfig", "check_before_load", "plan_and_run", "run"]
