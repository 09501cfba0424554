"""Full fine-tuning settings (none of its own: optimisation lives in TrainConfig)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FullConfig:
    """Full fine-tuning has no settings of its own (optimisation lives in TrainConfig)."""
