"""GPU tests (issue 14): every method's invariants in bf16 on CUDA, hook / nnsight patching equality on CUDA, SDPA vs
eager attention on CUDA, and one app analysis on CUDA. Marked ``gpu``; on a machine without CUDA each test is
skipped with the reason "no CUDA device" (allow-listed in tests/conftest.py ALLOWED_SKIPS, so CI on CPU passes).

Run on a GPU machine: ``pytest -m gpu tests/test_gpu.py`` (tiny models; the ``real`` ones load SmolLM2)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_tiny, tiny_llama_with_smollm2_tokenizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

CUDA = "cuda"
IDS = torch.tensor([[5, 9, 3, 7, 11, 2], [4, 4, 8, 1, 60, 33]])
#: method -> finetune() config on the tiny model (CAFT gets its directions file per test), learning rate
CONFIGS = {
    "lofit": ({"top_k_heads": 2}, 5e-2),
    "lora": ({"r": 4, "alpha": 8.0}, 2e-2),
    "full": ({}, 1e-2),
    "neft": ({"budget_fraction": 0.05}, 5e-2),
    "caft": ({"inner": "lofit", "inner_config": {"top_k_heads": 2}}, 5e-2),
}
#: zero-initialised interventions (identity) per method, for the no-op invariant
ZERO = {
    "lofit": {"top_k_heads": 2, "heads": [[0, 1], [1, 0]], "init_std": 0.0},
    "lora": {"r": 4, "alpha": 8.0},
    "full": {},
    "neft": {"neurons": [[0, 3], [1, 17]], "init_std": 0.0},
}


def _bf16_tiny():
    model, info = make_tiny(0)
    return model.to(device=CUDA, dtype=torch.bfloat16), info


def test_every_method_is_covered():
    from workbench.methods import available_methods

    assert set(available_methods()) == set(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_method_trains_in_bf16_on_cuda(name, tiny_examples, tmp_path):
    from workbench.finetune import finetune
    from workbench.hooked import hook_count
    from workbench.methods.caft import CaftIntervention, save_directions

    model, info = _bf16_tiny()
    ids = IDS.to(CUDA)
    with torch.no_grad():
        base = model(input_ids=ids).logits
    cfg, lr = CONFIGS[name]
    if name == "caft":
        g = torch.Generator().manual_seed(0)
        abl = CaftIntervention.from_directions({1: torch.randn(2, info.d_model, generator=g)}, info.to_dict(), source="t")
        cfg = {**cfg, **save_directions(abl, tmp_path / "dirs.safetensors")}
    result = finetune(name, model, info, tiny_examples, cfg, {"max_steps": 8, "lr": lr, "batch_size_prompts": 16, "progress": False})
    losses = result.train_result.losses
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    params = list(result.intervention.parameters())
    assert params and all(p.dtype == torch.float32 and p.device.type == CUDA for p in params)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base)  # outside attach: the base model
        with result.intervention.attach(model):
            tuned = model(input_ids=ids).logits
    assert tuned.dtype == torch.bfloat16 and torch.isfinite(tuned).all() and not torch.equal(tuned, base)
    assert hook_count(model) == 0


@pytest.mark.parametrize("name", sorted(ZERO))
def test_zero_init_is_identity_in_bf16_on_cuda(name):
    from workbench.methods import get_method

    model, info = _bf16_tiny()
    spec = get_method(name)
    inter = spec.intervention_cls(spec.config_cls(**ZERO[name]), info.to_dict()).to(CUDA)
    ids = IDS.to(CUDA)
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with inter.attach(model):
            assert torch.equal(model(input_ids=ids).logits, base)


def test_sdpa_and_eager_agree_on_cuda():
    from workbench.hooked import eager_attention

    model, _ = make_tiny(0)
    model = model.to(CUDA)
    model.set_attn_implementation("sdpa")
    ids = IDS.to(CUDA)
    with torch.no_grad():
        sdpa = model(input_ids=ids).logits
        with eager_attention(model):
            eager = model(input_ids=ids).logits
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=0)


def test_patching_hooks_equal_nnsight_on_cuda():
    from probes import metrics as pm
    from probes.patching import activation_patch, attribution_patch, head_sites
    from workbench.architecture import Dims
    from workbench.hooked import to_nnsight
    from workbench.sites import Site

    model, tok = tiny_llama_with_smollm2_tokenizer()
    model = model.to(CUDA)
    metric = pm.logit_diff(torch.tensor([7, 7]), torch.tensor([[9, 11], [9, 11]]))
    sites = head_sites(Dims.of(model), pos=-1) + [Site(1, "hook_resid_pre", pos=2), Site(0, "mlp.hook_post")]
    nn_model = to_nnsight(model, tok)
    for fn in (activation_patch, attribution_patch):
        ref = fn(model, sites, IDS, IDS.flip(-1), metric)
        got = fn(nn_model, sites, IDS, IDS.flip(-1), metric)
        torch.testing.assert_close(got.cpu(), ref.cpu(), atol=1e-5, rtol=0, msg=fn.__name__)
        cpu = fn(model.cpu(), sites, IDS, IDS.flip(-1), metric)
        model.to(CUDA)
        torch.testing.assert_close(ref.cpu(), cpu.cpu(), atol=1e-4, rtol=1e-4, msg=f"{fn.__name__}: cuda vs cpu")


def test_app_analysis_on_cuda(tmp_path):
    from app.latency.tiny import save_tiny
    from app.views.analysis import analyse_prompt
    from app.views.load import load_pair

    base = save_tiny(tmp_path / "base")
    tuned = save_tiny(tmp_path / "tuned", seed=1, perturb_from=base)
    loaded = load_pair(str(base), str(tuned), CUDA)
    a = analyse_prompt(loaded.pair, "The apple is in Box F, the key is in Box C. Box C contains the")
    assert float(a.kl.max()) > 0 and a.n_pos == len(a.input_ids)
    torch.testing.assert_close(a.patterns["base"].float().sum(-1), torch.ones(a.patterns["base"].shape[:-1]), atol=2e-3, rtol=0)
