"""Context-knob study (Minder et al., ICLR 2025): intent fine-tuning, layer search, rank-1 DAS knob, steering."""

from studies.context_knob.figures import figures
from studies.context_knob.study import ContextKnobConfig, run

__all__ = ["ContextKnobConfig", "figures", "run"]
