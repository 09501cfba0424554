"""Precision (issue 14): every registered method trains a bf16 model with fp32 parameters of its own, and the
fp32 path is bit-for-bit what it was (the casts at the hooks are no-ops there)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny

from workbench.finetune import finetune
from workbench.methods import available_methods
from workbench.methods.caft import CaftIntervention, save_directions

IDS = torch.tensor([[5, 9, 3, 7, 11, 2], [4, 4, 8, 1, 60, 33]])

#: method -> (config for finetune(), learning rate); CAFT trains LoFiT under a fixed ablation (its directions file is
#: written per test).
CONFIGS = {
    "lofit": (dict(top_k_heads=2), 5e-2),
    "lora": (dict(r=4, alpha=8.0), 2e-2),
    "full": (dict(), 1e-2),
    "neft": (dict(budget_fraction=0.05), 5e-2),
    "caft": (dict(inner="lofit", inner_config=dict(top_k_heads=2)), 5e-2),
}


def test_every_registered_method_is_covered():
    assert set(available_methods()) == set(CONFIGS), "add the new method to CONFIGS"


def _config(name, info, tmp_path):
    cfg, lr = CONFIGS[name]
    if name == "caft":
        g = torch.Generator().manual_seed(0)
        abl = CaftIntervention.from_directions({1: torch.randn(2, info.d_model, generator=g)}, info.to_dict(), source="test")
        cfg = {**cfg, **save_directions(abl, tmp_path / "dirs.safetensors")}
    return cfg, lr


def _tiny(dtype):
    model, info = make_tiny(0)
    return model.to(dtype), info


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bf16_model_trains_with_fp32_parameters(name, tiny_examples, tmp_path):
    model, info = _tiny(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg, lr = _config(name, info, tmp_path)
    result = finetune(name, model, info, tiny_examples, cfg,
                      {"max_steps": 6, "lr": lr, "batch_size_prompts": 16, "progress": False})
    losses = result.train_result.losses
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    params = list(result.intervention.parameters())
    assert params and all(p.dtype == torch.float32 for p in params), {p.dtype for p in params}
    assert all(bool(torch.isfinite(p).all()) for p in params)
    for k, v in model.state_dict().items():  # the model's own weights stay bf16 and untouched
        if "lora_" not in k:  # peft renames a wrapped layer's weight to ``base_layer.weight``
            assert v.dtype == torch.bfloat16 and torch.equal(v, before[k.replace(".base_layer", "")]), k
    with torch.no_grad(), result.intervention.attach(model):
        out = model(input_ids=IDS).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_small_updates_survive_in_fp32_but_not_in_bf16():
    """Why the parameters are fp32: an Adam-sized step on a value near 1 rounds away in bf16."""
    one = torch.tensor(1.0)
    step = torch.tensor(1e-3)
    assert (one.bfloat16() + step.bfloat16()) == one.bfloat16()
    assert (one + step) != one


@pytest.mark.parametrize("name", ["lofit", "neft", "full", "lora"])
def test_fp32_hook_path_is_bit_exact(name):
    """In fp32 the cast at the hook returns the parameter itself: the hooked logits equal an explicit computation
    without any cast (LoFiT / NeFT / full against their own formula; LoRA against peft's unchanged forward)."""
    from workbench.methods import get_method

    model, info = make_tiny(0)
    spec = get_method(name)
    kwargs = {"lofit": dict(top_k_heads=2, heads=[[0, 1], [1, 0]], init_std=0.1),
              "neft": dict(neurons=[[0, 3], [1, 17]], init_std=0.1), "full": dict(), "lora": dict(r=4, alpha=8.0)}[name]
    inter = spec.intervention_cls(spec.config_cls(**kwargs), info.to_dict())
    inter.bind(model)
    with torch.no_grad():
        for p in inter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for p in inter.parameters():
        assert p.dtype == torch.float32
        assert p.to(device=p.device, dtype=torch.float32) is p  # the cast at the hook is the identity in fp32
    with torch.no_grad(), inter.attach(model):
        hooked = model(input_ids=IDS).logits
    if name in ("lora",):
        return  # peft's own forward: nothing of ours in the path besides the (no-op) dtype check above
    merged, _ = make_tiny(0)
    inter.merge_into(merged)
    with torch.no_grad():
        assert (merged(input_ids=IDS).logits - hooked).abs().max() < 1e-5


def test_lora_adapters_fp32_on_bf16_model():
    from workbench.methods import get_method

    model, info = _tiny(torch.bfloat16)
    spec = get_method("lora")
    inter = spec.intervention_cls(spec.config_cls(r=4, alpha=8.0), info.to_dict())
    inter.bind(model)
    assert len(list(inter.parameters())) > 0 and all(p.dtype == torch.float32 for p in inter.parameters())
    with torch.no_grad(), inter.attach(model):
        assert model(input_ids=IDS).logits.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_load_model_dtype_on_a_local_directory(dtype, tmp_path):
    from conftest import tiny_llama_with_smollm2_tokenizer

    from workbench.models import load_model

    model, tok = tiny_llama_with_smollm2_tokenizer()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, _, info = load_model(tmp_path / "m", device="cpu", dtype=dtype)
    assert {p.dtype for p in loaded.parameters()} == {getattr(torch, dtype)}
    assert info.n_layers == 2


@pytest.mark.real
def test_load_model_dtype_on_the_registry_model():
    from workbench.models import load_model

    model, tok, info = load_model("smollm2-135m-instruct", device="cpu", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ids = tok("The Eiffel Tower is in the city of", return_tensors="pt").input_ids
    with torch.no_grad():
        top = model(input_ids=ids).logits[0, -1].argmax()
    assert tok.decode([int(top)]) == " Paris"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny base folder and a peft LoRA adapter folder on it (its config names the base folder)."""
    from peft import LoraConfig, get_peft_model

    from conftest import tiny_llama_with_smollm2_tokenizer

    root = tmp_path_factory.mktemp("dtype_paths")
    model, tok = tiny_llama_with_smollm2_tokenizer()
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.peft_config["default"].base_model_name_or_path = str(root / "base")
    peft_model.save_pretrained(root / "adapter")
    tok.save_pretrained(root / "adapter")
    return root


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_load_model_dtype_on_a_peft_adapter_folder(saved, dtype):
    from workbench.models import load_model

    model, _, _ = load_model(saved / "adapter", device="cpu", dtype=dtype)
    names = [n for n, _ in model.named_parameters()]
    assert any("lora_" in n for n in names)  # the adapter was applied
    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_load_model_dtype_on_a_cached_hub_id(saved, dtype, monkeypatch, tmp_path):
    """A hub id served from the local HF cache (offline), as tests/test_boundaries.py fakes it."""
    import shutil

    import huggingface_hub.constants as hc

    from workbench.models import load as load_mod

    cache = tmp_path / "hf_cache"
    snap = cache / "models--wbtest--tiny-dtype" / "snapshots" / ("0" * 40)
    shutil.copytree(saved / "base", snap)
    (cache / "models--wbtest--tiny-dtype" / "refs").mkdir(parents=True)
    (cache / "models--wbtest--tiny-dtype" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(load_mod, "_HUB", {})
    model, _, info = load_mod.load_model("wbtest/tiny-dtype", device="cpu", dtype=dtype)
    assert info.id == "wbtest/tiny-dtype" and {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}


#: Recorded on 2026-11-27 with the code BEFORE the precision change (``git archive HEAD`` at 8707747, fp32, tiny
#: model, the script below): per-step losses and the sum of the attached model's logits on ``IDS``. The code after
#: the change gave bit-identical numbers (checked then with ``cmp`` on the JSON); this pins it.
FP32_BEFORE = {
    "lofit": ([4.150754928588867, 4.127405166625977, 4.082018852233887, 4.06381893157959], -4.8549115517380415),
    "lora": ([4.1513237953186035, 4.150601387023926, 4.069762706756592, 4.0723466873168945], -19.304208697260947),
    "full": ([4.1513237953186035, 4.069360733032227, 3.637826681137085, 3.361734390258789], -356.1804641187191),
    "neft": ([4.1513237953186035, 4.091992378234863, 3.9854421615600586, 3.9678800106048584], -19.786250907071917),
}


@pytest.mark.parametrize("name", sorted(FP32_BEFORE))
def test_fp32_training_unchanged_by_the_precision_work(name, tiny_examples):
    cfg, lr = {"lofit": ({"top_k_heads": 2}, 5e-2), "lora": ({"r": 4, "alpha": 8.0}, 2e-2), "full": ({}, 1e-2),
               "neft": ({"budget_fraction": 0.05}, 5e-2)}[name]
    torch.manual_seed(0)
    model, info = make_tiny(0)
    result = finetune(name, model, info, tiny_examples, cfg, {"max_steps": 4, "lr": lr, "batch_size_prompts": 16, "progress": False})
    with torch.no_grad(), result.intervention.attach(model):
        total = float(model(input_ids=IDS).logits.double().sum())
    losses, logit_sum = FP32_BEFORE[name]
    assert result.train_result.losses == pytest.approx(losses, rel=1e-6, abs=1e-6)
    assert total == pytest.approx(logit_sum, rel=1e-6, abs=1e-5)
