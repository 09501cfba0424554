"""GPU tests (issue 14; references and guards: issue 26): every method trained in bf16 on CUDA against the same run in
fp32 on the CPU, zero-init identities in bf16 on CUDA, hook / nnsight patching on CUDA against the CPU, SDPA vs eager
attention on CUDA, and the app's analysis path on CUDA against the same pair on the CPU. Marked ``gpu``; on a machine
without CUDA each is skipped with the reason "no CUDA device" (allow-listed in tests/conftest.py ALLOWED_SKIPS, so CI
on CPU passes). Three tests need no GPU and run everywhere: the method table covers every registered method, the
allow-list names exactly the CUDA tests, and the app's logit-lens view runs with the weights on the ``meta`` device
(a CPU-side catch for the CPU-analysis-meets-GPU-weights bug that broke the app on CUDA).

Run on a GPU machine: ``pytest -m gpu tests/test_gpu.py`` (tiny models; the patching test needs SmolLM2's tokenizer)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from conftest import make_tiny, tiny_llama_with_smollm2_tokenizer

CUDA = "cuda"
IDS = torch.tensor([[5, 9, 3, 7, 11, 2], [4, 4, 8, 1, 60, 33]])
PROMPT = "The apple is in Box F, the key is in Box C. Box C contains the"
#: method -> finetune() config on the tiny model (CAFT gets its directions file per test), learning rate. LoRA at 1e-2:
#: at 2e-2 its loss rises at step 6 and a one-ulp difference sends bf16 and fp32 down different paths (measured with
#: the CPU's bf16: 0.65 max |Δ logit| after 8 steps at 2e-2, 1.6e-3 at 1e-2). NeFT with "random" selection (seeded,
#: precision-free): the default "low" ranks neurons after a 50-step fine-tuning at lr 2e-5 of a copy in the model's
#: dtype, and in bf16 most of those updates round away (32 % of the tiny model's gate weights moved, 100 % in fp32),
#: so bf16 and fp32 select other neurons and there is no common run to compare; at lr 2e-2 rather than 5e-2 (at 5e-2
#: the loss plateaus from step 4 and AdamW's normalised steps turn bf16 noise into 15 U of output difference).
CONFIGS = {
    "lofit": ({"top_k_heads": 2}, 5e-2),
    "lora": ({"r": 4, "alpha": 8.0}, 1e-2),
    "full": ({}, 1e-2),
    "neft": ({"budget_fraction": 0.05, "selection": "random"}, 2e-2),
    "caft": ({"inner": "lofit", "inner_config": {"top_k_heads": 2}}, 5e-2),
}
#: zero-initialised interventions (identity) per method, for the no-op invariant
ZERO = {
    "lofit": {"top_k_heads": 2, "heads": [[0, 1], [1, 0]], "init_std": 0.0},
    "lora": {"r": 4, "alpha": 8.0},
    "full": {},
    "neft": {"neurons": [[0, 3], [1, 17]], "init_std": 0.0},
}
#: bf16's unit roundoff: 8 significant bits (2.4 decimal digits, "~3 significant digits"), rounding error ≤ 2^-8 of the value.
U = 2.0**-8
#: per-step training loss, bf16 on CUDA vs fp32 on the CPU, relative (see test_method_trains_in_bf16_on_cuda)
LOSS_RTOL = 2 * U
#: tuned logits after training, bf16 on CUDA vs fp32 on the CPU, relative in Frobenius norm
OUT_RTOL = 8 * U


def on_cuda(fn):
    """Mark ``fn`` as a GPU test, skipped with the allow-listed reason where CUDA is missing."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")(fn))


def _train(name, device, dtype, examples, tmp_path):
    """finetune() ``name`` on a fresh tiny model (seed 0) moved to ``device`` / ``dtype``, 8 steps, seed 0.

    Returns:
        ``(result, model, base, outside, tuned)``: the logits on IDS of the model before training, after it outside
        ``attach()``, and under the trained intervention (in the model's dtype, on ``device``).
    """
    from workbench.finetune import finetune
    from workbench.methods.caft import CaftIntervention, save_directions

    model, info = make_tiny(0)
    model = model.to(device=device, dtype=dtype)
    ids = IDS.to(device)
    cfg, lr = CONFIGS[name]
    if name == "caft":
        g = torch.Generator().manual_seed(0)
        abl = CaftIntervention.from_directions({1: torch.randn(2, info.d_model, generator=g)}, info.to_dict(), source="t")
        cfg = {**cfg, **save_directions(abl, tmp_path / f"dirs-{device}.safetensors")}
    with torch.no_grad():
        base = model(input_ids=ids).logits
    result = finetune(name, model, info, examples, cfg, {"max_steps": 8, "lr": lr, "batch_size_prompts": 16, "progress": False})
    with torch.no_grad():
        outside = model(input_ids=ids).logits
        with result.intervention.attach(model):
            tuned = model(input_ids=ids).logits
    return result, model, base, outside, tuned


def test_every_method_is_covered():
    from workbench.methods import available_methods

    assert set(available_methods()) == set(CONFIGS)


def test_the_skip_allow_list_names_exactly_the_cuda_tests():
    """tests/conftest.py ALLOWED_SKIPS lists this module's CUDA tests, and only them (the others must run in CI)."""
    import conftest

    marked = {n for n, f in globals().items() if n.startswith("test_") and any(m.name == "gpu" for m in getattr(f, "pytestmark", []))}
    listed = {key.split("::", 1)[1] for key in conftest.ALLOWED_SKIPS if key.startswith("tests/test_gpu.py::")}
    assert marked == listed and len(marked) == 5


@on_cuda
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_method_trains_in_bf16_on_cuda(name, tiny_examples, tmp_path):
    """8 steps in bf16 on CUDA against the same run (same seed, batches, init and selection) in fp32 on the CPU.

    Tolerances, from bf16's unit roundoff U = 2^-8 ≈ 3.9e-3 (about 3 significant digits):
    - per-step loss: |loss_bf16 − loss_fp32| ≤ 2U · |loss_fp32| ≈ 7.8e-3 relative. The loss is an fp32 log-softmax of
      bf16 logits, each off by about U of its size; measured with the CPU's bf16 as a stand-in: ≤ 0.4 U for every method.
    - final outputs: ‖tuned_bf16 − tuned_fp32‖ ≤ 8U · ‖tuned_fp32‖ ≈ 3.1e-2 (Frobenius, logits on IDS). One bf16
      forward pass of the tiny model alone is 1.3 U off, and training adds: AdamW normalises every gradient element, so
      bf16 noise in small ones becomes lr-sized steps (measured: 0.6–1.4 U for LoFiT, LoRA, full, CAFT; 3.3 U for NeFT).
    - non-zero guard: training moved the fp32 outputs by ≥ 8× that tolerance (‖tuned − base‖ ≥ 0.25 ‖tuned‖), so the
      comparison would catch a CUDA run whose intervention did nothing; LoFiT's selected heads (and CAFT's inner ones)
      equal the reference's (score margin at the cut: 0.146 vs 0.089, bf16 moves them by < 1e-3).
    """
    from workbench.hooked import hook_count

    res, model, base, outside, tuned = _train(name, CUDA, torch.bfloat16, tiny_examples, tmp_path)
    ref, _, ref_base, _, ref_tuned = _train(name, "cpu", torch.float32, tiny_examples, tmp_path)
    losses, ref_losses = res.train_result.losses, ref.train_result.losses
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    params = list(res.intervention.parameters())
    assert params and all(p.dtype == torch.float32 and p.device.type == CUDA for p in params)
    assert torch.equal(outside, base)  # outside attach: the base model
    assert tuned.dtype == torch.bfloat16 and torch.isfinite(tuned).all() and not torch.equal(tuned, base)
    assert hook_count(model) == 0

    for key in ("heads", "neurons"):
        assert res.details.get(key) == ref.details.get(key), key
    assert len(losses) == len(ref_losses) == 8
    rel = [abs(a - b) / abs(b) for a, b in zip(losses, ref_losses)]
    assert max(rel) <= LOSS_RTOL, f"per-step loss rel. diff {[f'{r:.1e}' for r in rel]} > {LOSS_RTOL:.1e}"
    got, want = tuned.float().cpu(), ref_tuned.float()
    assert float((want - ref_base).norm()) >= 8 * OUT_RTOL * float(want.norm()), "the reference run barely moved its outputs"
    drift = float((got - want).norm() / want.norm())
    assert drift <= OUT_RTOL, f"tuned logits: ‖bf16 CUDA − fp32 CPU‖ / ‖fp32 CPU‖ = {drift:.2e} > {OUT_RTOL:.2e}"


@on_cuda
@pytest.mark.parametrize("name", sorted(ZERO))
def test_zero_init_is_identity_in_bf16_on_cuda(name):
    """Exact identity at zero init; guards: the logits compared are not zeros, and the same intervention with non-zero
    parameters does change them (so the identity is not an attach() that does nothing)."""
    from workbench.methods import get_method

    model, info = make_tiny(0)
    model = model.to(device=CUDA, dtype=torch.bfloat16)
    spec = get_method(name)
    inter = spec.intervention_cls(spec.config_cls(**ZERO[name]), info.to_dict()).to(CUDA)
    ids = IDS.to(CUDA)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with inter.attach(model):
            assert torch.equal(model(input_ids=ids).logits, base)
        params = list(inter.parameters())  # LoRA and full fine-tuning create theirs at the first attach (bind)
        assert params
        for p in params:
            p.add_(0.1 * torch.randn(p.shape, generator=g).to(p.device))
        with inter.attach(model):
            moved = model(input_ids=ids).logits
        assert torch.equal(model(input_ids=ids).logits, base)
    assert float(base.float().abs().max()) > 0.05
    assert float((moved.float() - base.float()).abs().max()) > 1e-2


@on_cuda
def test_sdpa_and_eager_agree_on_cuda():
    """SDPA equals eager attention on CUDA (fp32, 1e-5), and both equal the CPU's eager logits (fp32: summation order
    only); guard: the logits are not near zero."""
    from workbench.hooked import eager_attention

    model, _ = make_tiny(0)
    with torch.no_grad():
        cpu = model(input_ids=IDS).logits
    model = model.to(CUDA)
    model.set_attn_implementation("sdpa")
    ids = IDS.to(CUDA)
    with torch.no_grad():
        sdpa = model(input_ids=ids).logits
        with eager_attention(model):
            eager = model(input_ids=ids).logits
    assert float(cpu.abs().max()) > 0.05
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=0)
    torch.testing.assert_close(eager.cpu(), cpu, atol=1e-5, rtol=0)


@on_cuda
def test_patching_hooks_equal_nnsight_on_cuda():
    """Hook and nnsight patching agree on CUDA and with the CPU; guard: the effects are not all (near) zero, which
    a patch that never reached the model would give on every side."""
    from probes import metrics as pm
    from probes.patch_sites import head_sites
    from probes.patching import activation_patch, attribution_patch
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
        assert float(ref.abs().max()) > 1e-3, f"{fn.__name__}: every effect is ~0"  # 7e-3 / 1.1e-2 on the CPU
        got = fn(nn_model, sites, IDS, IDS.flip(-1), metric)
        torch.testing.assert_close(got.cpu(), ref.cpu(), atol=1e-5, rtol=0, msg=fn.__name__)
        cpu = fn(model.cpu(), sites, IDS, IDS.flip(-1), metric)
        model.to(CUDA)
        torch.testing.assert_close(ref.cpu(), cpu.cpu(), atol=1e-4, rtol=1e-4, msg=f"{fn.__name__}: cuda vs cpu")


def _tensors(obj):
    """Every tensor inside a dataclass / dict / list / tuple (what a view-model hands to numpy and plotly)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name))
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _app_path(pair, tokens=None):
    """What app/main.py and app/render_lens.py compute for PROMPT: the analysis without a lens, then the lens window,
    the lens at the last position for ``tokens`` (default: the page's default answer / contrast tokens), and those
    tokens tracked through every layer. Returns ``(analysis, window, lens_at, tracked, tokens)``."""
    from app.views.analysis import analyse_prompt
    from app.views.lens import default_tokens, lens_at, lens_window, tracked_logits, window_bounds

    a = analyse_prompt(pair, PROMPT, lens_positions=0)
    tokens = torch.tensor(default_tokens(a)) if tokens is None else tokens
    return a, lens_window(pair, a, *window_bounds(a.n_pos)), lens_at(pair, a, -1, tokens), tracked_logits(pair, a, tokens), tokens


@on_cuda
def test_app_analysis_on_cuda(tmp_path):
    """The app's path on a pair loaded on CUDA (fp32) against the same pair on the CPU: every tensor it returns is on
    the CPU, and the values agree (fp32 both: summation order only, 1e-5 abs on probabilities and KL, 1e-4 on logits
    and residuals, 1e-3 on the fp16 attention patterns). Guards: the tuned model differs (KL > 1e-4 somewhere) and the
    lens / tracked values are not zero. Probabilities are compared rather than top-1 ids (robust to near-ties)."""
    from app.latency.tiny import save_tiny
    from workbench.models.tuned import load_pair

    base = save_tiny(tmp_path / "base")
    tuned = save_tiny(tmp_path / "tuned", seed=1, perturb_from=base)
    want = _app_path(load_pair(str(base), str(tuned), "cpu").pair)
    got = _app_path(load_pair(str(base), str(tuned), CUDA).pair, tokens=want[-1])  # the same tokens even at a near-tie
    assert all(t.device.type == "cpu" for t in _tensors(got)), "a view-model tensor left on CUDA"
    (a, window, at, tracked, _), (ra, rwindow, rat, rtracked, _) = got, want
    assert float(ra.kl.max()) > 1e-4 and a.n_pos == len(a.input_ids) == ra.n_pos
    assert float(rwindow.final_prob["base"].max()) > 0 and float(rtracked["tuned"].abs().max()) > 1e-3
    prob = {"atol": 1e-5, "rtol": 0}
    torch.testing.assert_close(a.kl, ra.kl, **prob)
    for role in ("base", "tuned"):
        torch.testing.assert_close(a.patterns[role].float().sum(-1), torch.ones(a.patterns[role].shape[:-1]), atol=2e-3, rtol=0)
        torch.testing.assert_close(a.patterns[role].float(), ra.patterns[role].float(), atol=1e-3, rtol=0)
        torch.testing.assert_close(a.resid_post[role], ra.resid_post[role], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.top_probs[role], ra.top_probs[role], **prob)
        torch.testing.assert_close(window.top_probs[role], rwindow.top_probs[role], **prob)
        torch.testing.assert_close(window.final_prob[role], rwindow.final_prob[role], **prob)
        torch.testing.assert_close(at[role], rat[role], **prob)
        torch.testing.assert_close(tracked[role], rtracked[role], atol=1e-4, rtol=1e-4)


def test_lens_window_moves_the_cpu_analysis_to_the_models_device(tmp_path, monkeypatch):
    """The app on CUDA, emulated on the CPU (CI has no GPU): app/main.py keeps the analysis on the CPU and computes the
    logit-lens window apart from ``a.resid_post`` (app.views.lens.lens_window). Here the pair's weights go to PyTorch's
    ``meta`` device, a second device that needs no hardware and has CUDA's rule: a (non-scalar) CPU tensor meeting a
    meta one raises. The lens runs under FakeTensorMode (shapes and devices, no data) so that its ``.cpu()`` of meta
    results works, and hands real CPU tensors of its outputs' shapes on to the token decoding."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from app.latency.tiny import save_tiny
    from app.views import lens as lens_view
    from app.views.analysis import analyse_prompt
    from workbench.architecture import unembedding
    from workbench.models.tuned import load_pair

    base = save_tiny(tmp_path / "base")
    pair = load_pair(str(base), str(save_tiny(tmp_path / "tuned", seed=1, perturb_from=base)), "cpu").pair
    a = analyse_prompt(pair, PROMPT, lens_positions=0)  # as app/main.py: on the CPU, no lens
    pair.base.to("meta"), pair.tuned.to("meta")
    mode, real_lens, calls = FakeTensorMode(allow_non_fake_inputs=True), lens_view.chunked_logit_lens, []

    def lens(model, resid, target=None, **kw):
        calls.append((resid.device.type, unembedding(model).weight.device.type))
        with mode:
            out = real_lens(model, resid, target, **kw)  # raises on CPU rows against meta weights
        assert all(t.device.type == "cpu" for t in _tensors(out)), "the lens must hand back CPU tensors"
        return dataclasses.replace(out, top_ids=torch.zeros(out.top_ids.shape, dtype=torch.long), top_probs=torch.zeros(out.top_probs.shape),
                                   target_prob=torch.zeros(out.target_prob.shape))

    monkeypatch.setattr(lens_view, "chunked_logit_lens", lens)
    window = lens_view.lens_window(pair, a, *lens_view.window_bounds(a.n_pos))
    assert calls == [("meta", "meta")] * 2
    assert all(t.device.type == "cpu" for t in _tensors(window))
    with mode:  # lens_at has no data-dependent step: all of it runs on fake tensors (tracked_logits checks its ids' range)
        at = lens_view.lens_at(pair, a, -1, torch.tensor([1, 2]))
    assert all(t.device.type == "cpu" for t in at.values())
