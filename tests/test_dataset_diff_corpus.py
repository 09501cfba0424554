"""Dataset-level diff (probes/diff, studies/dataset_diff, ``workbench diff``, the app's diff page): every statistic
against an independent hand computation on tiny models, the zero cases, streaming = one batch, bounded memory,
one forward pass of each model per batch, bad input refused before any model loads, the command end to end,
and one real-model smoke run (``real``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from app.latency.tiny import save_tiny, save_tiny_run
from probes.diff import DiffSettings, diff_corpus, head_diff_norm, token_kl
from probes.diff.stats import RowMean, StreamingTopK
from workbench.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["The apple is in Box F, the key is in Box C.", "Paris is the capital of France.", "Hello world, hello app.",
         "Box C contains the key. The Eiffel Tower is in Paris.", "Hello"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("diff_models")
    base = save_tiny(root / "base")
    tuned = save_tiny(root / "tuned", seed=1, perturb_from=base)
    run = save_tiny_run(root / "runs" / "lofit-run", base)
    return base, tuned, run, root


@pytest.fixture(scope="module")
def pair(dirs):
    from workbench.models.tuned import load_pair

    base, tuned, *_ = dirs
    return load_pair(str(base), str(tuned), "cpu").pair


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def _settings(**kw):
    return DiffSettings(**{"batch_size": 2, "lens_token_stride": 1, "top_k_contexts": 5, "context_window": 3, **kw})


# --- hand computations: plain torch hooks on the HF modules, one unpadded row at a time -------------------------------
@torch.no_grad()
def _hand_run(model, ids, context=None):
    """logits [T, V], resid_post [L, T, d], z [L, T, H, dh] of one row, read with raw torch hooks registered after
    ``context`` (the tuned side's intervention) is entered, so they see what o_proj really receives."""
    from contextlib import nullcontext

    layers = model.model.layers
    resid, z = [None] * len(layers), [None] * len(layers)
    with context if context is not None else nullcontext():
        handles = []
        for l, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(lambda m, a, o, l=l: resid.__setitem__(l, (o[0] if isinstance(o, tuple) else o)[0].clone())))
            handles.append(layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a, l=l: z.__setitem__(l, a[0][0].clone())))
        try:
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        finally:
            for h in handles:
                h.remove()
    n_heads = model.config.num_attention_heads
    return logits, torch.stack(resid), torch.stack(z).unflatten(-1, (n_heads, -1))


def _hand(pair, texts, k=5):
    from scipy.stats import t as student

    tok = pair.tokenizer
    rows = [tok(x, add_special_tokens=False)["input_ids"] for x in texts]
    rows = [([tok.bos_token_id] if pair.prepend_bos else []) + r for r in rows if r]
    kls, rel, cos, head, dp, dlogp, agree = [], [], [], [], 0, 0, 0
    delta, dcount = torch.zeros(k, pair.base.config.hidden_size), torch.zeros(k)
    wb = [l.self_attn.o_proj.weight for l in pair.base.model.layers]
    wt = [l.self_attn.o_proj.weight for l in pair.tuned.model.layers]
    for ids in rows:
        lb, rb, zb = _hand_run(pair.base, ids)
        lt, rt, zt = _hand_run(pair.tuned, ids, pair.tuned_context())
        kl = F.kl_div(lb.log_softmax(-1), lt.log_softmax(-1), log_target=True, reduction="none").sum(-1)
        kls.append(kl)
        rel.append(((rt - rb).norm(dim=-1) / rb.norm(dim=-1)).mean(-1))
        cos.append(F.cosine_similarity(rt, rb, dim=-1).mean(-1))
        n_heads, dh = zb.shape[-2], zb.shape[-1]
        ob = torch.stack([torch.einsum("thd,mhd->thm", zb[l], wb[l].unflatten(-1, (n_heads, dh))) for l in range(len(wb))])
        ot = torch.stack([torch.einsum("thd,mhd->thm", zt[l], wt[l].unflatten(-1, (n_heads, dh))) for l in range(len(wt))])
        head.append((ot - ob).norm(dim=-1).mean(1))
        dp = dp + (lt.softmax(-1) - lb.softmax(-1)).sum(0)
        dlogp = dlogp + (lt.log_softmax(-1) - lb.log_softmax(-1)).sum(0)
        d = (rt - rb)[int(0.5 * (len(rt) - 1)), :k]  # the reference's layer; one δ per token position
        delta[: len(d)] += d
        dcount[: len(d)] += 1
        from workbench.architecture import readout
        agree = agree + torch.stack([(readout(pair.base, rb[l]).argmax(-1) == lb.argmax(-1)).sum() for l in range(len(rb))])
    per_row = torch.stack([x.mean() for x in kls])
    n = len(rows)
    q = student.ppf(0.975, n - 1)
    ci = lambda v: (v.mean(0), v.mean(0) - q * v.std(0) / n ** 0.5, v.mean(0) + q * v.std(0) / n ** 0.5)
    all_kl = torch.cat(kls)
    return {"rows": rows, "kls": kls, "kl_mean": float(all_kl.mean()), "kl_row": ci(per_row), "rel": ci(torch.stack(rel)),
            "cos": ci(torch.stack(cos)), "head": ci(torch.stack(head)), "dp": dp / len(all_kl), "dlogp": dlogp / len(all_kl),
            "delta": delta / dcount[:, None],
            "agree": agree / len(all_kl)}


def test_token_kl_is_torch_kl_div():
    g = torch.Generator().manual_seed(0)
    lt, lb = torch.randn(3, 7, 50, generator=g).log_softmax(-1), torch.randn(3, 7, 50, generator=g).log_softmax(-1)
    ref = F.kl_div(lb, lt, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(token_kl(lt, lb), ref)


def test_head_diff_norm_equals_direct_head_outputs():
    g = torch.Generator().manual_seed(0)
    zt, zb = torch.randn(4, 3, 2, 8, generator=g), torch.randn(4, 3, 2, 8, generator=g)
    wb = torch.randn(16, 16, generator=g)
    for wt in (wb, wb + 0.1 * torch.randn(16, 16, generator=g)):
        d, b = head_diff_norm(zt, zb, wt, wb)
        ob = torch.einsum("...hd,mhd->...hm", zb, wb.unflatten(-1, (2, 8)))
        ot = torch.einsum("...hd,mhd->...hm", zt, wt.unflatten(-1, (2, 8)))
        torch.testing.assert_close(d, (ot - ob).norm(dim=-1), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b, ob.norm(dim=-1), rtol=1e-4, atol=1e-4)


def test_every_statistic_matches_a_hand_computation(pair):
    got = diff_corpus(pair, TEXTS, _settings()).metrics
    hand = _hand(pair, TEXTS)
    assert got["n_rows"] == len(hand["rows"]) and got["n_tokens"] == sum(len(r) for r in hand["rows"])
    assert got["kl"]["mean_per_token"] == pytest.approx(hand["kl_mean"], rel=1e-4)
    for key, (mean, lo, hi) in (("kl", hand["kl_row"]),):
        assert got[key]["per_row"]["mean"] == pytest.approx(float(mean), rel=1e-4)
        assert got[key]["per_row"]["ci_low"] == pytest.approx(float(lo), rel=1e-3)
        assert got[key]["per_row"]["ci_high"] == pytest.approx(float(hi), rel=1e-3)
    ld = got["layer_diff"]
    for key, name in (("resid_rel_diff", "rel"), ("resid_cosine", "cos"), ("head_diff_norm", "head")):
        mean, lo, hi = hand[name]
        torch.testing.assert_close(_t(ld[key]["mean"]), mean.double(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(_t(ld[key]["ci_low"]), lo.double(), rtol=1e-3, atol=1e-6)
        torch.testing.assert_close(_t(ld[key]["ci_high"]), hi.double(), rtol=1e-3, atol=1e-6)
    # diff mining: the mean Δprob of every vocabulary token; the lists are its top / bottom entries
    top = got["mining"]["rising_by_prob"][0]
    assert top["id"] == int(hand["dp"].argmax()) and top["value"] == pytest.approx(float(hand["dp"].max()), rel=1e-4)
    assert got["mining"]["falling_by_prob"][0]["id"] == int(hand["dp"].argmin())
    assert [r["id"] for r in got["mining"]["rising_by_prob"]] == hand["dp"].topk(len(got["mining"]["rising_by_prob"])).indices.tolist()
    top_lp = got["mining"]["rising_by_logprob"]
    assert [r["id"] for r in top_lp] == hand["dlogp"].topk(len(top_lp)).indices.tolist()
    assert top_lp[0]["value"] == pytest.approx(float(hand["dlogp"].max()), rel=1e-4)
    # ADL: one δ_j per token position j < 5 at the reference's layer int(0.5 · (2 − 1)) = 0
    assert got["adl"]["layer"] == 0
    torch.testing.assert_close(_t(got["adl"]["delta_norm_by_position"]), hand["delta"].norm(dim=-1).double(), rtol=1e-4, atol=1e-7)
    # logit lens of the base model: agreement per layer, the last layer agrees everywhere
    torch.testing.assert_close(_t(got["logit_lens"]["base"]["top1_agreement"]), hand["agree"].double())
    assert got["logit_lens"]["base"]["top1_agreement"][-1] == 1.0 and got["logit_lens"]["tuned"]["top1_agreement"][-1] == 1.0
    assert got["forward_passes"] == {"base": 3, "tuned": 3}  # 5 rows in batches of 2: one pass of each model per batch


def test_intervention_pair_runs_the_tuned_side_with_the_intervention(dirs):
    from workbench.models.tuned import load_pair

    base, _, run, _ = dirs
    p = load_pair(str(base), str(run), "cpu").pair
    assert p.tuned is p.base and p.tuned_intervention is not None
    got = diff_corpus(p, TEXTS[:3], _settings()).metrics
    hand = _hand(p, TEXTS[:3])
    assert got["kl"]["mean_per_token"] == pytest.approx(hand["kl_mean"], rel=1e-4) and hand["kl_mean"] > 1e-6
    torch.testing.assert_close(_t(got["layer_diff"]["head_diff_norm"]["mean"]), hand["head"][0].double(), rtol=1e-4, atol=1e-6)


def test_identical_models_give_zero_differences(dirs):
    from workbench.models.tuned import load_pair

    base = dirs[0]
    p = load_pair(str(base), str(base), "cpu").pair
    d = diff_corpus(p, TEXTS, _settings())
    m = d.metrics
    assert m["kl"]["mean_per_token"] == 0.0 and m["kl"]["max"] == 0.0
    assert max(m["layer_diff"]["resid_rel_diff"]["mean"]) == 0.0 and min(m["layer_diff"]["resid_cosine"]["mean"]) == pytest.approx(1.0)
    assert max(max(r) for r in m["layer_diff"]["head_diff_norm"]["mean"]) == 0.0
    assert float(d.delta_by_position.abs().max()) == 0.0 and max(m["adl"]["delta_norm_by_position"]) == 0.0
    assert m["mining"]["n_top1_changed"] == 0


def test_streaming_equals_one_batch(pair):
    one = diff_corpus(pair, TEXTS, _settings(batch_size=len(TEXTS))).metrics
    for bs in (1, 3):
        many = diff_corpus(pair, TEXTS, _settings(batch_size=bs)).metrics
        assert many["n_batches"] == -(-len(TEXTS) // bs)
        assert many["kl"]["mean_per_token"] == pytest.approx(one["kl"]["mean_per_token"], rel=1e-5)
        assert [(t["row"], t["pos"]) for t in many["kl"]["top"]] == [(t["row"], t["pos"]) for t in one["kl"]["top"]]
        for key in ("resid_rel_diff", "resid_cosine", "head_diff_norm"):
            for stat in ("mean", "ci_low", "ci_high"):
                torch.testing.assert_close(torch.tensor(many["layer_diff"][key][stat]), torch.tensor(one["layer_diff"][key][stat]), rtol=1e-4, atol=1e-6)
        assert [r["id"] for r in many["mining"]["rising_by_prob"]] == [r["id"] for r in one["mining"]["rising_by_prob"]]
        for role in ("base", "tuned"):
            a, b = many["logit_lens"][role], one["logit_lens"][role]
            assert a["top1_agreement"] == b["top1_agreement"] and a["n_positions"] == b["n_positions"]
            torch.testing.assert_close(_t(a["kl_to_final"]), _t(b["kl_to_final"]), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(_t(many["adl"]["delta_norm_by_position"]), _t(one["adl"]["delta_norm_by_position"]), rtol=1e-5, atol=1e-9)
        assert many["adl"]["split_half_cosine"] == pytest.approx(one["adl"]["split_half_cosine"], rel=1e-4)


def test_top_kl_contexts_point_at_the_right_tokens(pair):
    m = diff_corpus(pair, TEXTS, _settings(top_k_contexts=4, context_window=3)).metrics
    hand = _hand(pair, TEXTS)
    flat = sorted(((float(v), r, p) for r, kl in enumerate(hand["kls"]) for p, v in enumerate(kl.tolist())), reverse=True)[:4]
    top = m["kl"]["top"]
    assert [(t["row"], t["pos"]) for t in top] == [(r, p) for _, r, p in flat]
    for t, (v, r, p) in zip(top, flat):
        ids = hand["rows"][r]
        assert t["kl"] == pytest.approx(v, rel=1e-4)
        assert t["token"] == ids[p] and t["left"] == ids[max(0, p - 3):p] and t["right"] == ids[p + 1:p + 4]
        assert t["token_text"] == pair.tokenizer.decode([ids[p]])


def test_streams_lazily_one_batch_at_a_time(pair):
    """Texts are read from the iterable only as batches need them; per-batch memory does not grow with the corpus."""
    consumed, seen_at_forward = [], []

    def texts():
        for i in range(9):
            consumed.append(i)
            yield TEXTS[i % len(TEXTS)]

    h = pair.base.register_forward_pre_hook(lambda *a: seen_at_forward.append(len(consumed)))
    try:
        m = diff_corpus(pair, texts(), _settings(batch_size=2)).metrics
    finally:
        h.remove()
    assert m["n_rows"] == 9 and m["forward_passes"] == {"base": 5, "tuned": 5}
    assert seen_at_forward == [2, 4, 6, 8, 9]  # never more than one batch read ahead
    assert len(m["kl"]["top"]) == 5  # streaming top-k keeps k items


def test_running_statistics():
    rm = RowMean()
    v = torch.randn(10, 3, dtype=torch.float64)
    rm.add(v[:4])
    rm.add(v[4:])
    r = rm.result()
    torch.testing.assert_close(_t(r["mean"]), v.mean(0))
    torch.testing.assert_close(_t(r["std"]), v.std(0))
    top = StreamingTopK(3)
    for i, x in enumerate([1.0, 5.0, 3.0, 5.0, 2.0, 4.0]):
        top.push(x, i)
    assert top.items() == [(5.0, 1), (5.0, 3), (4.0, 5)]


# --- bad input: one clear error, before any model loads --------------------------------------------------------------
def _no_load(cfg):
    raise AssertionError("a model was loaded before the input was checked")


@pytest.mark.parametrize("fields, match", [
    ({"texts": ["", "  "]}, "no text"),
    ({"texts": []}, "exactly one corpus"),
    ({"texts": ["a"], "data": "x.jsonl"}, "exactly one corpus"),
    ({"texts": ["a"], "batch_size": 0}, "batch_size"),
    ({"texts": ["a"], "layer": "middle"}, "layer"),
    ({"texts": ["a"], "patchscope_scales": [float("nan")]}, "patchscope_scales"),
    ({"texts": ["a"], "patchscope_prompts": ["no placeholder"]}, "placeholder"),
    ({"texts": ["a"], "steering_positions": [5]}, "steering_positions"),
    ({"texts": ["a"], "read_model": "other"}, "read_model"),
    ({"texts": ["a"], "tuned": ""}, "tuned"),
])
def test_bad_configs_are_refused(fields, match):
    from studies.dataset_diff import ModelDiffConfig
    from workbench.config import config_from_dict

    with pytest.raises(ConfigError, match=match):
        config_from_dict(ModelDiffConfig, {"tuned": "t", **fields})


def test_bad_input_refused_before_models_load(dirs, tmp_path):
    from studies.dataset_diff import ModelDiffConfig, plan_and_run
    from workbench.config import config_from_dict

    base = str(dirs[0])
    cfg = lambda **kw: config_from_dict(ModelDiffConfig, {"base": base, "tuned": base, **kw})
    runs = tmp_path / "runs"
    with pytest.raises(ConfigError, match="layer 7 does not exist"):
        plan_and_run(cfg(texts=["a"], layer=7), runs, "r", load=_no_load)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        plan_and_run(cfg(data=str(empty)), runs, "r", load=_no_load)
    with pytest.raises(ConfigError, match="outside the runs folder"):
        plan_and_run(cfg(texts=["a"]), runs, None, out=tmp_path / "elsewhere", load=_no_load)
    with pytest.raises(ConfigError, match="--name"):
        plan_and_run(cfg(texts=["a"]), runs, "../up", load=_no_load)
    assert not runs.exists() and not (tmp_path / "elsewhere").exists()


def test_empty_corpus_and_bad_layer_in_the_streaming_pass(pair):
    with pytest.raises(ConfigError, match="corpus is empty"):
        diff_corpus(pair, ["", ""], _settings())
    with pytest.raises(ConfigError, match="layer 5 does not exist"):
        diff_corpus(pair, TEXTS, _settings(layer=5))


def test_lens_sample_positions():
    from probes.diff.corpus import _lens_sample

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)  # real flat indices 0, 1, 2, 4, 5
    assert _lens_sample(mask, 1).tolist() == [0, 1, 2, 4, 5]
    assert _lens_sample(mask, 2).tolist() == [0, 2, 5]
    assert _lens_sample(mask, 3).tolist() == [1, 5]
    assert _lens_sample(mask, 128).tolist() == [2]  # fewer real tokens than the stride: the middle one


def test_token_shift_update_equals_add_sums():
    from probes.diff.mining import TokenShift

    g = torch.Generator().manual_seed(0)
    lt, lb = torch.randn(2, 3, 11, generator=g).log_softmax(-1), torch.randn(2, 3, 11, generator=g).log_softmax(-1)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    a, b = TokenShift(11), TokenShift(11)
    a.update(lt, lb, mask, lb.argmax(-1), lt.argmax(-1))
    rt, rb = lt[mask], lb[mask]
    b.add_sums(rt.exp().sum(0) - rb.exp().sum(0), (rt - rb).sum(0), rb.argmax(-1), rt.argmax(-1))
    for x, y in zip(a.means(), b.means()):
        torch.testing.assert_close(x, y)
    assert a.n == b.n == 3 and torch.equal(a.gained, b.gained) and torch.equal(a.lost, b.lost)
    torch.testing.assert_close(a.means()[0], (rt.exp() - rb.exp()).mean(0).double())
