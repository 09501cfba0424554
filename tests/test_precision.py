"""Precision (issues 14, 26): every registered method trains a bf16 model with fp32 parameters of its own, a bf16 run
follows the fp32 run of the same seed within tolerances derived from bf16's precision, and in fp32 the casts at the
hooks are no-ops (the fp32 training itself is checked against a loop written by hand in tests/test_fp32_reference.py)."""

from __future__ import annotations

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


#: bf16 against fp32 (derivation in the test's docstring): per-step loss, relative; final logits with the
#: intervention, absolute (nats, |logits| ≤ 1 on the tiny model); the learned change of the logits, relative L2.
LOSS_REL, LOGITS_ABS, EFFECT_REL = 2e-2, 0.1, 0.25
STEPS = 6


def _run(name, tiny_examples, tmp_path, dtype=torch.float32, mixed_precision="no"):
    """Train ``name`` for STEPS steps (seed 0) on a tiny model in ``dtype``; return the result, the model, its base
    logits on IDS and its logits with the trained intervention."""
    model, info = _tiny(dtype)
    cfg, lr = _config(name, info, tmp_path)
    with torch.no_grad():
        base = model(input_ids=IDS).logits
    result = finetune(name, model, info, tiny_examples, cfg, {"max_steps": STEPS, "lr": lr, "batch_size_prompts": 16, "seed": 0,
                                                              "progress": False, "mixed_precision": mixed_precision})
    with torch.no_grad(), (result.details.get("evaluate_with") or result.intervention).attach(model):
        tuned = model(input_ids=IDS).logits
    return result, model, base, tuned


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bf16_runs_follow_the_fp32_run(name, tiny_examples, tmp_path):
    """A bf16 model (fp32 parameters of the method's own) and an fp32 model under bf16 autocast train like the fp32
    run of the same seed, within tolerances derived from bf16's precision.

    bf16 keeps 8 significant bits: unit roundoff u = 2⁻⁸ ≈ 3.9e-3 (2-3 significant digits). On the tiny model
    (activations and logits ≲ 1) a logit passes ~10 rounded operations (2 blocks of norm, attention, MLP, then the
    head), so it moves by ≲ 10u ≈ 0.04 at worst; the answer cross-entropy (computed in fp32, ≈ 4.1 nats) moves by at
    most twice that, 0.08 nats, i.e. 2e-2 relative: LOSS_REL = 2e-2 on every step. The parameters are fp32 in both
    runs and AdamW normalises the gradient, so bf16 noise changes each update by O(u) relatively and 6 steps keep
    the paths together — except where a discrete choice is made from bf16 numbers (NeFT's neuron ranking, LoFiT's
    head ranking), which may pick differently. Final logits with the intervention: LOGITS_ABS = 0.1 (≈ 25u at
    |logit| ≤ 1: the forward's 10u plus the paths' drift). The learned change (tuned − base logits, each run on its
    own model) agrees within EFFECT_REL = 0.25 relative L2.

    Measured (2-core CPU; max over the 6 steps; bf16 weights / bf16 autocast), per-step loss relative difference:
    caft 4.5e-5 / 4.3e-5, full 4.1e-4 / 5.0e-4, lofit 4.0e-5 / 3.7e-5, lora 3.4e-4 / 4.3e-4, neft 6.9e-3 / 6.2e-5;
    final logits: ≤ 3.8e-2 (neft, bf16 weights), others ≤ 3.0e-2; learned change: ≤ 0.078 (neft), others ≤ 0.026.
    """
    ref, _, ref_base, ref_tuned = _run(name, tiny_examples, tmp_path)
    for mode, dtype, mp in (("bf16 weights", torch.bfloat16, "no"), ("bf16 autocast", torch.float32, "bf16")):
        result, _model, base, tuned = _run(name, tiny_examples, tmp_path, dtype, mp)
        losses = result.train_result.losses
        assert len(losses) == len(ref.train_result.losses) == STEPS
        assert losses == pytest.approx(ref.train_result.losses, rel=LOSS_REL), (mode, losses, ref.train_result.losses)
        assert losses[-1] < losses[0], mode
        assert float((tuned.float() - ref_tuned).abs().max()) <= LOGITS_ABS, mode
        effect, ref_effect = tuned.float() - base.float(), ref_tuned - ref_base
        assert float((effect - ref_effect).norm() / ref_effect.norm()) <= EFFECT_REL, mode
        params = list(result.intervention.parameters())
        assert params and all(p.dtype == torch.float32 and bool(torch.isfinite(p).all()) for p in params), (mode, {p.dtype for p in params})
        assert tuned.dtype == dtype and torch.isfinite(tuned).all(), mode


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_training_leaves_a_bf16_model_bf16_and_untouched(name, tiny_examples, tmp_path):
    model, info = _tiny(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg, lr = _config(name, info, tmp_path)
    finetune(name, model, info, tiny_examples, cfg, {"max_steps": 2, "lr": lr, "batch_size_prompts": 16, "progress": False})
    for k, v in model.state_dict().items():  # the model's own weights stay bf16 and untouched
        if "lora_" not in k:  # peft renames a wrapped layer's weight to ``base_layer.weight``
            assert v.dtype == torch.bfloat16 and torch.equal(v, before[k.replace(".base_layer", "")]), k


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
