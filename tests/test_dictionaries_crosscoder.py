"""Crosscoders and difference SAEs (probes/dictionaries/): recovery of planted features, BatchTopK's exact budget and
inference threshold, the L1 loss, evaluation against a hand computation, determinism and bad input.

Synthetic activations: 24 random unit directions in d = 32 — 8 shared (the same direction in both models), 8 only in
the base, 8 only in the tuned model — each firing independently with probability 1/12 (two per token on average, k = 2)
with a magnitude in [0.5, 1.5], plus Gaussian noise of std 0.01 per coordinate.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from probes.dictionaries import (
    Crosscoder,
    CrosscoderConfig,
    DictionaryError,
    DiffSAE,
    DiffSAEConfig,
    LatentClassThresholds,
    batch_topk_mask,
    classify_latents,
    evaluate_dictionary,
    train_dictionary,
)
from workbench.errors import ConfigError, MismatchError, WorkbenchError

D, N_EACH = 32, 8


def planted(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(base_dirs, tuned_dirs)`` ``[24, d]``: rows 0–7 shared, 8–15 base-only (tuned row 0), 16–23 tuned-only."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(3 * N_EACH, D, generator=g)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    base, tuned = dirs.clone(), dirs.clone()
    base[2 * N_EACH:] = 0
    tuned[N_EACH:2 * N_EACH] = 0
    return base, tuned


def stream(base_dirs: torch.Tensor, tuned_dirs: torch.Tensor, seed: int, batch: int = 256, p: float = 1 / 12,
           noise: float = 0.01):
    """Endless activation batches ``{"base", "tuned"}`` built from the planted directions."""
    g = torch.Generator().manual_seed(seed)
    while True:
        m = base_dirs.shape[0]
        c = (torch.rand(batch, m, generator=g) < p).float() * (0.5 + torch.rand(batch, m, generator=g))
        yield {"base": c @ base_dirs + noise * torch.randn(batch, D, generator=g),
               "tuned": c @ tuned_dirs + noise * torch.randn(batch, D, generator=g)}


def best_matches(rows: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each target row, the best cosine over ``rows`` and its index."""
    r = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    t = targets / targets.norm(dim=-1, keepdim=True)
    return (t @ r.T).max(dim=1)


@pytest.fixture(scope="module", params=["batch_topk", "l1"])
def trained(request):
    base_dirs, tuned_dirs = planted()
    cfg = CrosscoderConfig(d_model=D, n_latents=48, objective=request.param, k=2 if request.param == "batch_topk" else None,
                           l1_coefficient=0.3, dead_after_tokens=2560)
    cc = Crosscoder(cfg)
    history = train_dictionary(cc, stream(base_dirs, tuned_dirs, seed=1), steps=300, lr=3e-3, seed=0, decay_steps=60)
    return cc, history, base_dirs, tuned_dirs


def test_crosscoder_recovers_planted_shared_base_only_and_tuned_only_features(trained):
    cc, history, base_dirs, tuned_dirs = trained
    assert history["steps_run"] == 300 and history["loss"][-1] < history["loss"][0] / 5
    rows = torch.cat([cc.decoder_directions("base"), cc.decoder_directions("tuned")], dim=1).detach()
    cos, idx = best_matches(rows, torch.cat([base_dirs, tuned_dirs], dim=1))
    assert bool((cos > 0.9).all()), cos
    assert len(set(idx.tolist())) == 3 * N_EACH  # one latent per planted feature
    delta = cc.relative_decoder_norm()[idx]
    shared, base_only, tuned_only = delta[:N_EACH], delta[N_EACH:2 * N_EACH], delta[2 * N_EACH:]
    assert bool(((shared > 0.4) & (shared < 0.6)).all()), shared
    assert bool((base_only < 0.1).all()) and bool((tuned_only > 0.9).all()), (base_only, tuned_only)
    classes = classify_latents(cc.relative_decoder_norm())
    assert set(idx[:N_EACH].tolist()) <= set(classes["shared"].tolist())
    assert set(idx[N_EACH:2 * N_EACH].tolist()) <= set(classes["base_only"].tolist())
    assert set(idx[2 * N_EACH:].tolist()) <= set(classes["tuned_only"].tolist())


def test_trained_crosscoder_explains_the_variance_and_batch_topk_holds_k_at_inference(trained):
    cc, history, base_dirs, tuned_dirs = trained
    ev = evaluate_dictionary(cc, stream(base_dirs, tuned_dirs, seed=7), max_batches=4)
    assert ev["n_tokens"] == 1024
    assert min(ev["fraction_variance_explained"].values()) > 0.98
    if cc.config.objective == "batch_topk":
        assert history["threshold"] > 0 and all(x == 2.0 for x in history["l0"])  # exactly k per token in training
        assert 1.5 < ev["mean_l0"] < 2.5  # the estimated threshold keeps about k at inference
        assert float(cc.threshold) == history["threshold"]
    else:
        assert history["threshold"] == -1.0 and history["sparsity"][-1] > 0


def test_batch_topk_keeps_exactly_k_times_batch_activations_in_training():
    cc = Crosscoder(CrosscoderConfig(d_model=16, n_latents=64, k=3))
    g = torch.Generator().manual_seed(0)
    batch = {"base": torch.randn(37, 16, generator=g), "tuned": torch.randn(37, 16, generator=g)}
    cc.fit_input_scale([batch])
    cc.train()
    out = cc(batch)
    assert int((out.latents > 0).sum()) == 3 * 37
    kept = (out.pre * cc.decoder_norms().sum(-1)).detach()
    assert float(kept[out.latents > 0].min()) >= float(kept[out.latents == 0].max())  # the largest scores are kept
    # ties and zeros: still exactly min(k·B, B·n) entries
    assert int(batch_topk_mask(torch.zeros(5, 4), 3).sum()) == 15
    assert int(batch_topk_mask(torch.ones(5, 4), 9).sum()) == 20


def test_inference_threshold_is_a_running_mean_of_the_smallest_kept_score():
    cc = Crosscoder(CrosscoderConfig(d_model=4, n_latents=6, k=1, threshold_beta=0.9))
    with torch.no_grad():
        cc.W_dec.copy_(torch.ones_like(cc.W_dec) / 4)  # every latent's score = f · (0.5 + 0.5)
    pre1 = torch.tensor([[0.0, 3.0, 1.0, 0, 0, 0], [2.0, 0, 0, 0, 0, 0.5]])
    pre2 = torch.tensor([[0.0, 5.0, 0, 0, 0, 0], [0.0, 0, 4.0, 0, 0, 0]])
    cc.sparsify(pre1, batch_topk=True, update_threshold=True)  # keeps 3.0 and 2.0 → θ = 2.0
    assert float(cc.threshold) == pytest.approx(2.0)
    cc.sparsify(pre2, batch_topk=True, update_threshold=True)  # smallest kept 4.0 → 0.9·2 + 0.1·4
    assert float(cc.threshold) == pytest.approx(2.2)
    f = cc.sparsify(pre1, batch_topk=False)  # inference: score > θ
    assert torch.equal(f, torch.tensor([[0.0, 3.0, 0, 0, 0, 0], [0.0, 0, 0, 0, 0, 0]]))


def test_l1_loss_weights_each_latent_by_the_sum_of_its_decoder_norms():
    cc = Crosscoder(CrosscoderConfig(d_model=8, n_latents=5, objective="l1", l1_coefficient=0.7))
    g = torch.Generator().manual_seed(3)
    batch = {"base": torch.randn(6, 8, generator=g), "tuned": torch.randn(6, 8, generator=g)}
    cc.fit_input_scale([batch])
    out = cc.loss(batch)
    x = torch.stack([batch["base"], batch["tuned"]], 1) * cc.input_scale[:, None]
    f = torch.relu(torch.einsum("bsd,sdn->bn", x, cc.W_enc) + cc.b_enc)
    x_hat = torch.einsum("bn,nsd->bsd", f, cc.W_dec) + cc.b_dec
    recon = ((x - x_hat) ** 2).sum((1, 2)).mean()
    norms = cc.W_dec.norm(dim=-1)  # [n, 2]
    sparsity = 0.7 * (f * (norms[:, 0] + norms[:, 1])).sum(1).mean()
    torch.testing.assert_close(out["reconstruction"], recon)
    torch.testing.assert_close(out["sparsity"], sparsity)
    torch.testing.assert_close(out["loss"], recon + sparsity)


def test_input_scale_makes_the_mean_squared_norm_d_model():
    g = torch.Generator().manual_seed(4)
    batches = [{"base": 3 * torch.randn(50, 8, generator=g), "tuned": 0.1 * torch.randn(50, 8, generator=g) + 1}
               for _ in range(3)]
    cc = Crosscoder(CrosscoderConfig(d_model=8, n_latents=4, k=1))
    cc.fit_input_scale(batches)
    x = torch.cat([cc.normalize(cc.stack(b)) for b in batches])
    torch.testing.assert_close(x.pow(2).sum(-1).mean(0), torch.tensor([8.0, 8.0]))
    torch.testing.assert_close(cc.b_dec.detach(), x.mean(0))  # the decoder bias starts at the mean input
    with pytest.raises(DictionaryError, match="input scale not set"):
        Crosscoder(CrosscoderConfig(d_model=8, n_latents=4, k=1))(batches[0])


@torch.no_grad()
def test_evaluate_dictionary_equals_a_hand_computation():
    cc = Crosscoder(CrosscoderConfig(d_model=4, n_latents=3, objective="l1", seed=5))
    with torch.no_grad():
        cc.input_scale.copy_(torch.tensor([2.0, 0.5]))
        cc.b_enc.copy_(torch.tensor([-0.5, 0.1, -100.0]))  # latent 2 can never fire
        cc.b_dec.normal_()
    g = torch.Generator().manual_seed(6)
    batches = [{"base": torch.randn(5, 4, generator=g), "tuned": torch.randn(5, 4, generator=g)} for _ in range(2)]
    got = evaluate_dictionary(cc, batches)
    a = torch.cat([torch.stack([b["base"], b["tuned"]], 1) for b in batches]).double()  # [10, 2, 4]
    scale = torch.tensor([2.0, 0.5], dtype=torch.float64)[:, None]
    f = torch.relu(torch.einsum("bsd,sdn->bn", a * scale, cc.W_enc.double()) + cc.b_enc.double())
    a_hat = (torch.einsum("bn,nsd->bsd", f, cc.W_dec.double()) + cc.b_dec.double()) / scale
    for s, name in enumerate(("base", "tuned")):
        sse = ((a[:, s] - a_hat[:, s]) ** 2).sum()
        sst = ((a[:, s] - a[:, s].mean(0)) ** 2).sum()
        assert got["fraction_variance_explained"][name] == pytest.approx(float(1 - sse / sst), rel=1e-5)
        assert got["mse_per_token"][name] == pytest.approx(float(sse / 10), rel=1e-5)
    assert got["mean_l0"] == pytest.approx(float((f > 0).sum() / 10))
    assert got["n_dead"] == int((~(f > 0).any(0)).sum()) >= 1 and got["dead_fraction"] == got["n_dead"] / 3
    assert got["n_tokens"] == 10


def test_diff_sae_recovers_planted_difference_features():
    base_dirs, tuned_dirs = planted(seed=2)
    sae = DiffSAE(DiffSAEConfig(d_model=D, n_latents=48, k=2, dead_after_tokens=2560))
    # p = 1/8: the 16 features that differ (8 base-only, 8 tuned-only) fire twice per token on average
    history = train_dictionary(sae, stream(base_dirs, tuned_dirs, seed=3, p=1 / 8), steps=300, lr=3e-3, seed=0,
                               decay_steps=60)
    assert history["steps_run"] == 300
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(48, 1))  # unit decoder rows, kept through training
    diff_dirs = (tuned_dirs - base_dirs)[N_EACH:]  # −w for base-only features, +z for tuned-only ones
    cos, idx = best_matches(sae.decoder_directions("diff").detach(), diff_dirs)
    assert bool((cos > 0.9).all()), cos
    assert len(set(idx.tolist())) == 2 * N_EACH
    ev = evaluate_dictionary(sae, stream(base_dirs, tuned_dirs, seed=8, p=1 / 8), max_batches=2)
    assert ev["fraction_variance_explained"]["diff"] > 0.95 and list(ev["mse_per_token"]) == ["diff"]


def test_training_is_deterministic_given_the_seed():
    base_dirs, tuned_dirs = planted()

    def run(seed: int) -> Crosscoder:
        cc = Crosscoder(CrosscoderConfig(d_model=D, n_latents=16, k=2, seed=99))
        train_dictionary(cc, itertools.islice(stream(base_dirs, tuned_dirs, seed=1, batch=64), 20), steps=20, lr=1e-3,
                         seed=seed)
        return cc

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.W_dec, c.W_dec)
    history = train_dictionary(a, stream(base_dirs, tuned_dirs, seed=2, batch=64), steps=5, lr=1e-3, seed=0)
    assert history["tokens"] == 5 * 64 and int(a.tokens_seen) == 25 * 64  # a trained dictionary continues
    assert history["tokens_per_s"] > 0


def test_training_stops_early_when_the_batches_run_out_and_refuses_bad_arguments():
    base_dirs, tuned_dirs = planted()
    cc = Crosscoder(CrosscoderConfig(d_model=D, n_latents=8, k=1))
    history = train_dictionary(cc, itertools.islice(stream(base_dirs, tuned_dirs, seed=0, batch=32), 3), steps=10,
                               lr=1e-3, seed=0)
    assert history["stopped_early"] and history["steps_run"] == 3
    for kwargs in ({"steps": 0}, {"lr": 0.0}, {"lr": float("nan")}, {"warmup_steps": 6, "decay_steps": 6},
                   {"seed": -1}, {"steps": True}):
        args = {"steps": 10, "lr": 1e-3, "seed": 0, **kwargs}
        with pytest.raises(ConfigError):
            train_dictionary(Crosscoder(cc.config), [], **args)
    with pytest.raises(DictionaryError, match="no batch"):
        train_dictionary(cc, iter([]), steps=1, lr=1e-3, seed=0)  # trained before: no normalisation pass
    with pytest.raises(DictionaryError, match="no tokens"):
        train_dictionary(Crosscoder(cc.config), iter([]), steps=1, lr=1e-3, seed=0)
    with pytest.raises(DictionaryError, match="input scale not set"):
        train_dictionary(Crosscoder(cc.config), iter([]), steps=1, lr=1e-3, seed=0, normalization_batches=0)


@pytest.mark.parametrize("kwargs, match", [
    ({"objective": "batch_topk"}, "k is required"),
    ({"k": 9}, "at most n_latents"),
    ({"k": 2, "d_model": True}, "d_model"),
    ({"k": 2, "objective": "topk"}, "objective"),
    ({"k": 2, "l1_coefficient": -1.0}, "l1_coefficient"),
    ({"k": 2, "threshold_beta": 1.0}, "threshold_beta"),
    ({"k": 2, "n_latents": 0}, "n_latents"),
])
def test_bad_config_is_one_clear_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CrosscoderConfig(**{"d_model": 4, "n_latents": 8, **kwargs})


def test_config_from_dict_refuses_unknown_keys_and_bad_batches_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown"):
        CrosscoderConfig.from_dict({"d_model": 4, "n_latents": 8, "k": 2, "lr": 1.0})
    assert CrosscoderConfig.from_dict(CrosscoderConfig(d_model=4, n_latents=8, k=2).to_dict()).k == 2
    cc = Crosscoder(CrosscoderConfig(d_model=4, n_latents=8, k=2))
    with pytest.raises(ConfigError, match="'base' and 'tuned'"):
        cc.stack({"base": torch.zeros(2, 4)})
    with pytest.raises(MismatchError, match="base and tuned"):
        cc.stack({"base": torch.zeros(2, 4), "tuned": torch.zeros(3, 4)})
    with pytest.raises(ConfigError):
        Crosscoder(DiffSAEConfig(d_model=4, n_latents=8, k=2))
    with pytest.raises(ConfigError, match="must satisfy"):
        LatentClassThresholds(shared_min=0.05)
    assert issubclass(DictionaryError, WorkbenchError)


def test_classify_latents_uses_the_stated_bands():
    delta = torch.tensor([0.0, 0.1, 0.2, 0.4, 0.5, 0.6, 0.7, 0.9, 1.0, float("nan")])
    got = classify_latents(delta)
    assert got["base_only"].tolist() == [0, 1] and got["shared"].tolist() == [3, 4, 5]
    assert got["tuned_only"].tolist() == [7, 8] and got["other"].tolist() == [2, 6, 9]
    wide = classify_latents(delta, LatentClassThresholds(base_only_max=0.25, tuned_only_min=0.65))
    assert wide["base_only"].tolist() == [0, 1, 2] and wide["tuned_only"].tolist() == [6, 7, 8]
