"""LoFiT: localized fine-tuning of attention-head representations (Yin, Ye, Durrett, NeurIPS 2024)."""

from workbench.methods import register_method
from workbench.methods.lofit.config import LofitConfig
from workbench.methods.lofit.intervention import LofitOffsets, LofitScaling
from workbench.methods.lofit.trainer import LofitRun, lofit_trainer, top_k_heads, train_lofit

register_method("lofit", LofitConfig, LofitOffsets, trainer=lofit_trainer)

__all__ = ["LofitConfig", "LofitOffsets", "LofitScaling", "LofitRun", "top_k_heads", "train_lofit"]
