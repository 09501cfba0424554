"""Dataset-level model diff study (``workbench diff``; ``python -m studies.dataset_diff``)."""

from studies.dataset_diff.study import (
    ModelDiffConfig,
    check_before_load,
    plan_and_run,
    run,
)

__all__ = ["ModelDiffConfig", "check_before_load", "plan_and_run", "run"]
