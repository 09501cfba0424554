"""Independent references (issue 17, item 2): the losses and metrics pinned to values computed by hand.

Every expected value here is computed without the code under test: plain loops over unpadded sequences,
``math`` on typed-in numbers, logits tensors typed in by hand, or constructed models whose correct output
can be stated in advance.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.conftest import make_tiny
from workbench.data import Example, collate
from workbench.losses import answer_logprob, answer_loss, dpo_loss

# prompts and answers of different lengths; every answer multi-token and different per example
EXAMPLES = [
    Example((5, 9, 12), (20, 21)),
    Example((7,), (30, 31, 32, 33)),
    Example((11, 22, 33, 44, 55), (40, 41, 42)),
    Example((3, 4), (50, 8)),
]


def _hand_token_logprobs(model, examples):
    """Per example, the log-probs of its answer tokens: the model on the unpadded prompt+answer, position
    len(prompt)+j-1 predicting answer token j."""
    out = []
    for ex in examples:
        seq = list(ex.prompt_ids) + list(ex.answer_ids)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seq])).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        p = len(ex.prompt_ids)
        out.append([float(logp[p + j - 1, tok]) for j, tok in enumerate(ex.answer_ids)])
    return out


def _batch_logits(model, examples):
    ids, mask, labels = collate(examples, pad_id=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits, labels


# --- 1. answer-only loss and label alignment ------------------------------------------------------------
def test_collate_labels_are_the_answer_tokens_at_their_positions():
    ids, mask, labels = collate(EXAMPLES, pad_id=0)
    width = max(len(e.prompt_ids) + len(e.answer_ids) for e in EXAMPLES)
    assert ids.shape == labels.shape == mask.shape == (len(EXAMPLES), width)
    for i, ex in enumerate(EXAMPLES):
        seq = list(ex.prompt_ids) + list(ex.answer_ids)
        expected = [-100] * len(ex.prompt_ids) + list(ex.answer_ids) + [-100] * (width - len(seq))
        assert labels[i].tolist() == expected
        assert ids[i].tolist() == seq + [0] * (width - len(seq))
        assert mask[i].tolist() == [1] * len(seq) + [0] * (width - len(seq))


def test_answer_loss_equals_hand_mean_over_all_answer_tokens():
    model, _ = make_tiny(0)
    per_tok = [lp for row in _hand_token_logprobs(model, EXAMPLES) for lp in row]
    assert len(per_tok) == sum(len(e.answer_ids) for e in EXAMPLES) == 11
    expected = -sum(per_tok) / len(per_tok)  # mean over answer tokens, not over examples
    logits, labels = _batch_logits(model, EXAMPLES)
    assert float(answer_loss(logits, labels)) == pytest.approx(expected, abs=1e-5)
    # the mean over examples differs here (answers have 2..4 tokens), so the test tells the two apart
    per_ex = [-sum(r) / len(r) for r in _hand_token_logprobs(model, EXAMPLES)]
    assert abs(sum(per_ex) / len(per_ex) - expected) > 1e-3


def _shifted_loss(logits, labels):  # the off-by-one mutation: position t predicting label t
    return nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


def _late_loss(logits, labels):  # the other off-by-one: position t+1 predicting label t
    return nn.functional.cross_entropy(logits[:, 1:].flatten(0, 1).float(), labels[:, :-1].flatten(), ignore_index=-100)


@pytest.mark.parametrize("mutant", [_shifted_loss, _late_loss])
def test_hand_reference_rejects_off_by_one_losses(mutant):
    """The reference above is sharp: a loss misaligned by one position is far outside its 1e-5 tolerance."""
    model, _ = make_tiny(0)
    per_tok = [lp for row in _hand_token_logprobs(model, EXAMPLES) for lp in row]
    expected = -sum(per_tok) / len(per_tok)
    logits, labels = _batch_logits(model, EXAMPLES)
    assert abs(float(mutant(logits, labels)) - expected) > 1e-2


# --- 2. answer_logprob and dpo_loss -----------------------------------------------------------------------
def test_answer_logprob_equals_hand_sum_per_row():
    model, _ = make_tiny(1)
    expected = [sum(row) for row in _hand_token_logprobs(model, EXAMPLES)]
    logits, labels = _batch_logits(model, EXAMPLES)
    got = answer_logprob(logits, labels)
    assert got.shape == (len(EXAMPLES),)
    for g, e in zip(got.tolist(), expected):
        assert g == pytest.approx(e, abs=1e-5)


def test_dpo_loss_equals_written_out_formula():
    pc, pr = [-1.0, -4.0, -2.5], [-3.0, -1.0, -2.0]
    rc, rr = [-2.0, -3.5, -2.0], [-2.5, -1.5, -3.0]
    beta = 0.5

    def one(pc, pr, rc, rr):
        z = beta * ((pc - rc) - (pr - rr))
        return -math.log(1.0 / (1.0 + math.exp(-z)))

    expected = sum(one(*v) for v in zip(pc, pr, rc, rr)) / 3
    # margins: (1 - (-0.5)) = 1.5, (-0.5 - 0.5) = -1, (-0.5 - 1) = -1.5
    assert expected == pytest.approx((math.log1p(math.exp(-0.75)) + math.log1p(math.exp(0.5)) + math.log1p(math.exp(0.75))) / 3)
    got = dpo_loss(torch.tensor(pc), torch.tensor(pr), torch.tensor(rc), torch.tensor(rr), beta)
    assert float(got) == pytest.approx(expected, abs=1e-6)
    # equal policy and reference: margin 0, loss log 2 whatever beta
    t = torch.tensor([-1.0, -2.0])
    assert float(dpo_loss(t, t + 1, t, t + 1, 3.0)) == pytest.approx(math.log(2), abs=1e-7)


# --- 3. probes.metrics on typed-in logits ----------------------------------------------------------------
LOGITS = torch.tensor([[1.0, 3.0, 0.5, 2.0, -1.0],
                       [0.0, 0.0, 4.0, 1.0, 4.5]])


def test_logit_diff_by_hand():
    from probes.metrics import logit_diff

    # row 0: correct 1 (3.0), wrong {1, 3, 0} -> skip 1, max(2.0, 1.0) = 2.0 -> 1.0
    # row 1: correct 2 (4.0), wrong {4, 3, 2} -> skip 2, max(4.5, 1.0) = 4.5 -> -0.5
    got = logit_diff(torch.tensor([1, 2]), torch.tensor([[1, 3, 0], [4, 3, 2]]))(LOGITS)
    assert got.tolist() == pytest.approx([1.0, -0.5])


def test_prob_correct_by_hand():
    from probes.metrics import prob_correct

    rows = LOGITS.tolist()
    expected = [math.exp(rows[0][3]) / sum(math.exp(x) for x in rows[0]),
                math.exp(rows[1][0]) / sum(math.exp(x) for x in rows[1])]
    got = prob_correct(torch.tensor([3, 0]))(LOGITS)
    assert got.tolist() == pytest.approx(expected, abs=1e-7)


def test_accuracy_by_hand():
    from probes.metrics import accuracy

    # full vocabulary: argmax row 0 = 1, row 1 = 4
    assert accuracy(torch.tensor([1, 4]))(LOGITS).tolist() == [1.0, 1.0]
    assert accuracy(torch.tensor([3, 2]))(LOGITS).tolist() == [0.0, 0.0]
    # among candidates: row 0 {3, 4} -> 3 wins (2.0 > -1.0); row 1 {0, 2, 3} -> 2 wins (4.0)
    cand = torch.tensor([[3, 4, 4], [0, 2, 3]])
    assert accuracy(torch.tensor([3, 2]), cand)(LOGITS).tolist() == [1.0, 1.0]
    assert accuracy(torch.tensor([4, 0]), cand)(LOGITS).tolist() == [0.0, 0.0]


# --- 4. per-token KL direction ----------------------------------------------------------------------------
def test_per_token_kl_is_kl_tuned_given_base():
    from probes.diff.prompts import per_token_kl

    g = torch.Generator().manual_seed(0)
    base, tuned = torch.randn(2, 3, 7, generator=g), 2 * torch.randn(2, 3, 7, generator=g)
    lb, lt = base.log_softmax(-1), tuned.log_softmax(-1)
    # kl_div(input, target) = sum target * (log target - input): KL(target ‖ input) = KL(tuned ‖ base)
    expected = nn.functional.kl_div(lb, lt, log_target=True, reduction="none").sum(-1)
    got = per_token_kl(base, tuned)
    assert got.shape == (2, 3)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    reverse = nn.functional.kl_div(lt, lb, log_target=True, reduction="none").sum(-1)
    assert (got - reverse).abs().max() > 1e-2  # the direction is told apart
    # one position with math: P_tuned = (0.5, 0.5), P_base = (0.9, 0.1)
    b, t = torch.tensor([[[math.log(0.9), math.log(0.1)]]]), torch.tensor([[[0.0, 0.0]]])
    assert float(per_token_kl(b, t)) == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1), abs=1e-6)


# --- 5. LoFiT head selection -------------------------------------------------------------------------------
def test_top_k_heads_on_constructed_scores():
    from workbench.methods.lofit import top_k_heads

    scores = torch.tensor([[0.1, 0.9, 0.3, 0.0],
                           [0.8, 0.2, 0.05, 0.7],
                           [0.4, 0.6, 0.5, 0.15]])
    assert top_k_heads(scores, 1) == [[0, 1]]
    assert top_k_heads(scores, 3) == [[0, 1], [1, 0], [1, 3]]
    assert top_k_heads(scores, 5) == [[0, 1], [1, 0], [1, 3], [2, 1], [2, 2]]
    assert len(top_k_heads(scores, 12)) == 12


def _lofit_examples():
    g = torch.Generator().manual_seed(5)
    return [Example(tuple(torch.randint(3, 64, (5,), generator=g).tolist()), (7, 9)) for _ in range(16)]


def test_lofit_selected_heads_are_top_k_by_l2_norm_of_trained_scalings(monkeypatch):
    import workbench.methods.lofit.trainer as trainer
    from workbench.methods.lofit import LofitConfig, LofitScaling, train_lofit

    made = []

    class Recording(LofitScaling):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(trainer, "LofitScaling", Recording)
    model, info = make_tiny(2)
    cfg = LofitConfig(top_k_heads=2, init_std=1e-2,
                      select={"max_steps": 8, "lr": 5e-2, "batch_size_prompts": 8, "progress": False},
                      offset={"max_steps": 1, "batch_size_prompts": 4, "progress": False})
    run = train_lofit(model, info.to_dict(), _lofit_examples(), cfg)
    (scaling,) = made
    a = scaling.scales.detach()
    assert a.shape == (2, 2, 8)
    norms = {(l, h): math.sqrt(sum(float(x) ** 2 for x in a[l, h])) for l in range(2) for h in range(2)}
    ranked = sorted(norms, key=norms.get, reverse=True)
    assert norms[ranked[1]] - norms[ranked[2]] > 1e-6  # no tie at the cut, so the top-2 is well defined
    assert run.heads == sorted([list(p) for p in ranked[:2]])
    for (l, h), n in norms.items():
        assert float(run.head_scores[l, h]) == pytest.approx(n, rel=1e-5)


def test_lofit_larger_l1_lambda_gives_smaller_l1_norm():
    from workbench.methods.lofit import LofitConfig, LofitScaling
    from workbench.train import TrainConfig, fit, seed_everything

    model, info = make_tiny(2)
    examples = _lofit_examples()
    total = {}
    for lam in (0.0, 1e-3, 1e-2):
        cfg = LofitConfig(l1_lambda=lam, init_std=1e-2)
        scaling = LofitScaling(cfg, info.to_dict(), generator=seed_everything(0))
        fit(model, scaling, examples, TrainConfig(max_steps=15, lr=1e-2, batch_size_prompts=8, progress=False,
                                                  divergence_loss_factor=0))
        total[lam] = float(scaling.scales.detach().abs().sum())
    # measured: about 3.8, 0.54, 0.07; each tenfold larger lambda shrinks sum |A| several times
    assert total[1e-2] < 0.5 * total[1e-3] < 0.25 * total[0.0]


# --- 6. DAS interchange accuracy and steering rates on a constructed model ----------------------------------
TOK_A, TOK_B = 10, 20


def _sign_model(seed=3):
    """A tiny Llama whose top-1 token is TOK_A when uᵀh > 0 and TOK_B when uᵀh < 0 (h = last layer's output):
    final-norm weight 1 and lm_head = a uᵀ with a[A] = 1, a[B] = -1, else 0, so logits = a · uᵀh / rms(h)."""
    model, info = make_tiny(seed)
    g = torch.Generator().manual_seed(11)
    u = torch.randn(16, generator=g)
    u = u / u.norm()
    a = torch.zeros(64)
    a[TOK_A], a[TOK_B] = 1.0, -1.0
    with torch.no_grad():
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.copy_(torch.outer(a, u))
    return model, info, u


def _hand_projection(model, seq, u):
    """uᵀh at the last decoder layer's output, last token, one unpadded prompt, plain PyTorch hook."""
    got = {}
    handle = model.model.layers[-1].register_forward_hook(lambda _m, _a, o: got.setdefault("h", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(input_ids=torch.tensor([seq]))
    handle.remove()
    return float(got["h"][0, -1] @ u)


def _split_by_sign(model, u, n=4):
    g = torch.Generator().manual_seed(7)
    pos, neg = [], []
    while len(pos) < n or len(neg) < n:
        seq = torch.randint(3, 64, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
        p = _hand_projection(model, seq, u)
        if p > 1e-3 and len(pos) < n:
            pos.append(seq)
        elif p < -1e-3 and len(neg) < n:
            neg.append(seq)
    return pos, neg


def test_interchange_accuracy_known_answers():
    from probes.subspace import RankOneSubspace, SubspaceConfig, interchange_accuracy

    model, info, u = _sign_model()
    pos, neg = _split_by_sign(model, u)
    sub = RankOneSubspace(SubspaceConfig(layer=1), info.to_dict(), direction=u)
    # targets project < 0 (answer B), sources > 0 (answer A); the interchange copies the source's uᵀh into the
    # target, so every target must then answer A: accuracy 1; without the interchange 0
    answers = [TOK_A] * 4
    assert interchange_accuracy(model, sub, neg, pos, answers, batch_size=3) == 1.0
    assert interchange_accuracy(model, None, neg, pos, answers) == 0.0
    # the other way round, and a mixed batch: half the pairs swap sign, half keep it -> 0.5 against A
    assert interchange_accuracy(model, sub, pos, neg, [TOK_B] * 4) == 1.0
    mixed_t, mixed_s = neg[:2] + neg[2:], pos[:2] + neg[2:]
    assert interchange_accuracy(model, sub, mixed_t, mixed_s, [TOK_A] * 4) == 0.5
    # per-pair answers across batch chunks (3 + 1): the swapped pairs answer A, the self-pairs keep B
    assert interchange_accuracy(model, sub, mixed_t, mixed_s, [TOK_A, TOK_A, TOK_B, TOK_B], batch_size=3) == 1.0
    assert interchange_accuracy(model, sub, mixed_t, mixed_s, [TOK_B, TOK_A, TOK_B, TOK_A], batch_size=3) == 0.5
    # a direction orthogonal to u cannot move uᵀh: nothing changes
    w = torch.randn(16, generator=torch.Generator().manual_seed(1))
    ortho = RankOneSubspace(SubspaceConfig(layer=1), info.to_dict(), direction=w - (w @ u) * u)
    assert interchange_accuracy(model, ortho, neg, pos, answers) == 0.0


def test_steer_rates_known_answers():
    from probes.subspace import RankOneSubspace, SubspaceConfig, steer_rates

    model, info, u = _sign_model()
    pos, neg = _split_by_sign(model, u)
    seqs = pos[:2] + neg[:2]
    sub = RankOneSubspace(SubspaceConfig(layer=1), info.to_dict(), direction=u)
    # uᵀh ← c: c > 0 makes every prompt answer A, c < 0 makes every prompt answer B
    out = steer_rates(model, sub, seqs, [TOK_A] * 4, [TOK_B] * 4, [-2.0, 3.0, 0.5], batch_size=3)
    assert out["values"] == [-2.0, 3.0, 0.5]
    assert out["context_rate"] == [0.0, 1.0, 1.0]
    assert out["prior_rate"] == [1.0, 0.0, 0.0]
    # context answer A for half the prompts, B for the other half: rate 0.5 at every value
    half = steer_rates(model, sub, seqs, [TOK_A, TOK_B, TOK_A, TOK_B], [TOK_B, TOK_A, TOK_B, TOK_A], [-1.0, 1.0])
    assert half["context_rate"] == [0.5, 0.5]
    assert half["prior_rate"] == [0.5, 0.5]
