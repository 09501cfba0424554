"""Full fine-tuning baseline: every weight moves (as deltas applied with torch parametrize while attached)."""

from workbench.methods import register_method
from workbench.methods.full.config import FullConfig
from workbench.methods.full.intervention import FullFineTune

register_method("full", FullConfig, FullFineTune)

__all__ = ["FullConfig", "FullFineTune"]
