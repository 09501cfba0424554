"""Latent Scaling (probes/dictionaries/latent_scaling.py, Minder et al. 2025 §3): the closed form against a
least-squares solver, the streamed sums against a one-shot computation, and hand-built crosscoders whose latents show
complete shrinkage and latent decoupling next to a genuinely tuned-only latent."""

from __future__ import annotations

import pytest
import torch

from probes.dictionaries import (
    Crosscoder,
    CrosscoderConfig,
    DiffSAE,
    DiffSAEConfig,
    closed_form_beta,
    latent_scaling,
)
from workbench.errors import ConfigError, MismatchError


def test_closed_form_equals_a_least_squares_fit():
    g = torch.Generator().manual_seed(0)
    n, j, d = 40, 5, 7
    f = torch.relu(torch.randn(n, j, generator=g, dtype=torch.float64))
    y = torch.randn(n, j, d, generator=g, dtype=torch.float64)
    dirs = torch.randn(j, d, generator=g, dtype=torch.float64)
    got = closed_form_beta(f, y, dirs)
    for i in range(j):
        design = torch.outer(f[:, i], dirs[i]).reshape(-1, 1)  # vec(f_j d_jᵀ)  [N·d, 1]
        want = torch.linalg.lstsq(design, y[:, i].reshape(-1, 1)).solution
        torch.testing.assert_close(got[i], want[0, 0])
    shared = torch.randn(n, d, generator=g, dtype=torch.float64)  # one target for every latent
    torch.testing.assert_close(closed_form_beta(f, shared, dirs), closed_form_beta(f, shared[:, None].expand(n, j, d), dirs))
    assert torch.isnan(closed_form_beta(torch.zeros(n, 1, dtype=torch.float64), shared, dirs[:1]))[0]
    with pytest.raises(MismatchError):
        closed_form_beta(f, y, dirs[:, :3])


def _random_crosscoder(objective: str) -> Crosscoder:
    cc = Crosscoder(CrosscoderConfig(d_model=12, n_latents=20, objective=objective, k=3 if objective == "batch_topk" else None,
                                     seed=3))
    with torch.no_grad():
        g = torch.Generator().manual_seed(4)
        cc.W_dec.mul_(10 + 10 * torch.rand(20, 2, 1, generator=g))
        cc.b_dec.normal_(generator=g)
        cc.b_enc.fill_(0.05)
        cc.threshold.fill_(0.3)  # inference threshold: the result must not depend on how tokens are batched
    return cc


@pytest.mark.parametrize("objective", ["l1", "batch_topk"])
def test_streamed_latent_scaling_equals_a_one_shot_computation(objective):
    cc = _random_crosscoder(objective)
    g = torch.Generator().manual_seed(5)
    base, tuned = torch.randn(90, 12, generator=g), torch.randn(90, 12, generator=g)
    cc.fit_input_scale([{"base": base, "tuned": tuned}])
    latents = [0, 3, 7, 11, 19]
    streamed = latent_scaling(cc, [{"base": base[i:i + 30], "tuned": tuned[i:i + 30]} for i in (0, 30, 60)], latents)
    whole = latent_scaling(cc, [{"base": base, "tuned": tuned}], latents)
    assert streamed["n_tokens"] == whole["n_tokens"] == 90
    # one shot, by hand: Y built explicitly for every latent, then the closed form
    with torch.no_grad():
        cc.eval()
        out = cc({"base": base, "tuned": tuned})
    f, x, x_hat = out.latents[:, latents].double(), out.x.double(), out.reconstruction.double()
    rows = cc.W_dec.detach()[latents].double()  # [J, 2, d]
    direction = rows[:, 1]
    assert bool((f > 0).any(0).all())  # every latent read fires somewhere
    for s, model in enumerate(("base", "tuned")):
        own = f[:, :, None] * rows[None, :, s]  # f_j d_j^m  [N, J, d]
        targets = {"error": x[:, s, None] - x_hat[:, s, None] + own, "reconstruction": x_hat[:, s, None].expand_as(own),
                   "reconstruction_without_latent": x_hat[:, s, None] - own}
        for name, y in targets.items():
            want = closed_form_beta(f, y, direction)
            torch.testing.assert_close(streamed["beta"][model][name], want, rtol=1e-6, atol=1e-9)
            torch.testing.assert_close(whole["beta"][model][name], want, rtol=1e-6, atol=1e-9)
    b = streamed["beta"]
    torch.testing.assert_close(streamed["nu_error"], b["base"]["error"] / b["tuned"]["error"])
    torch.testing.assert_close(streamed["nu_reconstruction"], b["base"]["reconstruction"] / b["tuned"]["reconstruction"])
    assert streamed["n_active"].tolist() == (f > 0).sum(0).tolist()


def _hand_built(seed: int = 0, n_tokens: int = 3000):
    """A crosscoder (input scale 1, no biases, ReLU) whose latents are exactly the data's features, on orthonormal
    directions q0…q4 of d = 16:

    * latent 0: a shared feature (both rows q0);
    * latent 1: **truly tuned-only** — the feature is in the tuned activations only (tuned row q1, base row 0);
    * latent 2: **complete shrinkage** — the base activations carry the feature at 0.7 of its tuned size, but the
      latent's base row is 0 (what an L1 crosscoder can learn);
    * latents 3, 4: **latent decoupling** — one shared feature (q3 in both models) split into a tuned-only latent 3 and
      a base-only latent 4 that fire together.
    """
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(16, 16, generator=g))[0].T[:5]  # orthonormal rows
    c = (torch.rand(n_tokens, 4, generator=g) < 0.3).float() * (0.5 + torch.rand(n_tokens, 4, generator=g))
    base = c[:, :1] * q[0] + 0.7 * c[:, 2:3] * q[2] + c[:, 3:4] * q[3]
    tuned = c[:, :1] * q[0] + c[:, 1:2] * q[1] + c[:, 2:3] * q[2] + c[:, 3:4] * q[3]
    noise = 0.01 * torch.randn(2, n_tokens, 16, generator=g)
    cc = Crosscoder(CrosscoderConfig(d_model=16, n_latents=5, objective="l1"))
    enc = torch.zeros(2, 16, 5)
    dec = torch.zeros(5, 2, 16)
    enc[0, :, 0], enc[1, :, 0], dec[0, 0], dec[0, 1] = q[0] / 2, q[0] / 2, q[0], q[0]
    enc[1, :, 1], dec[1, 1] = q[1], q[1]
    enc[1, :, 2], dec[2, 1] = q[2], q[2]
    enc[1, :, 3], dec[3, 1] = q[3], q[3]
    enc[0, :, 4], dec[4, 0] = q[3], q[3]
    with torch.no_grad():
        cc.W_enc.copy_(enc)
        cc.W_dec.copy_(dec)
        cc.b_enc.zero_()
        cc.b_dec.zero_()
        cc.input_scale.fill_(1.0)
    return cc, [{"base": base[i:i + 500] + noise[0, i:i + 500], "tuned": tuned[i:i + 500] + noise[1, i:i + 500]}
                for i in range(0, n_tokens, 500)]


def test_latent_scaling_tells_shrunk_and_decoupled_latents_from_a_truly_tuned_only_one():
    cc, batches = _hand_built()
    delta = cc.relative_decoder_norm()
    assert delta[1:4].tolist() == [1.0, 1.0, 1.0]  # by decoder norms alone, all three look tuned-only
    got = latent_scaling(cc, batches, [0, 1, 2, 3])
    nu_e, nu_r, beta = got["nu_error"], got["nu_reconstruction"], got["beta"]
    # truly tuned-only: the base holds nothing along d_1
    assert abs(float(nu_e[1])) < 0.05 and abs(float(nu_r[1])) < 0.05 and bool(got["tuned_only"][1])
    assert float(beta["tuned"]["error"][1]) == pytest.approx(1.0, abs=0.02)
    # complete shrinkage: the base error holds the feature at 0.7 of its tuned size
    assert float(nu_e[2]) == pytest.approx(0.7, abs=0.03) and not bool(got["tuned_only"][2])
    assert abs(float(nu_r[2])) < 0.05  # ... which the reconstruction target does not see
    # latent decoupling: the base reconstruction carries d_3 through latent 4; the error target does not see it
    assert float(nu_r[3]) == pytest.approx(1.0, abs=0.03) and not bool(got["tuned_only"][3])
    assert abs(float(nu_e[3])) < 0.05
    assert float(beta["base"]["reconstruction_without_latent"][3]) == pytest.approx(1.0, abs=0.03)
    # the shared latent: both models hold it fully
    assert float(nu_e[0]) == pytest.approx(1.0, abs=0.05) and float(nu_r[0]) == pytest.approx(1.0, abs=0.05)
    assert got["tuned_only"].tolist() == [False, True, False, False]
    # a looser cut-off lets the shrunk latent through
    assert bool(latent_scaling(cc, batches, [2], max_ratio=0.8)["tuned_only"][0])


def test_latent_scaling_refuses_bad_input():
    cc, batches = _hand_built(n_tokens=500)
    with pytest.raises(ConfigError, match="indices"):
        latent_scaling(cc, batches, [5])
    with pytest.raises(ConfigError, match="indices"):
        latent_scaling(cc, batches, [])
    with pytest.raises(ConfigError, match="max_ratio"):
        latent_scaling(cc, batches, [1], max_ratio=0.0)
    with pytest.raises(ConfigError, match="no tokens"):
        latent_scaling(cc, [], [1])
    with pytest.raises(ConfigError, match="Crosscoder"):
        latent_scaling(DiffSAE(DiffSAEConfig(d_model=16, n_latents=4, k=1)), batches, [1])
    never = latent_scaling(cc, [{"base": torch.zeros(3, 16), "tuned": torch.zeros(3, 16)}], [1])
    assert torch.isnan(never["nu_error"][0]) and not bool(never["tuned_only"][0]) and never["n_active"].tolist() == [0]
