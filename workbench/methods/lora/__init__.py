"""LoRA baseline through peft (Hu et al., ICLR 2022), under the same Intervention protocol and fit()."""

from workbench.methods import register_method
from workbench.methods.lora.config import LoraMethodConfig
from workbench.methods.lora.intervention import ADAPTER, LoraIntervention
from workbench.methods.lora.peft_format import save_extras, save_peft_adapter

register_method("lora", LoraMethodConfig, LoraIntervention, save_extras=save_extras)

__all__ = ["ADAPTER", "LoraIntervention", "LoraMethodConfig", "save_peft_adapter"]
