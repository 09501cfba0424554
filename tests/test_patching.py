"""probes.patching / probes.circuits: every exact patch equals the same computation written by hand with
TransformerLens hooks (TransformerBridge.run_with_hooks) on a tiny random Llama; errors are clear."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny
from probes import metrics
from probes.circuits import cmap, faithfulness, random_circuit
from probes.dcm import DCMConfig, _mixed, dcm
from probes.patch_sites import Side, equal_length_ids, head_sites, layer_pos_sites
from probes.patching import activation_patch, as_head_scores, attribution_patch, cache, mean_activations
from probes.path_patching import path_patch
from workbench.architecture import Dims
from workbench.errors import ConfigError, MismatchError
from workbench.sites import Site

B, T = 4, 6
ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny_tok(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tinytok")
    t = Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w1"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=t, unk_token="w1", pad_token="w0", bos_token="w2", eos_token="w3").save_pretrained(d)
    return d, AutoTokenizer.from_pretrained(d)


@pytest.fixture(scope="module")
def setup(tiny_tok):
    """(model for our hook path, TransformerBridge over an identical copy, data)."""
    from transformer_lens.model_bridge import TransformerBridge

    d, tok = tiny_tok
    model, _ = make_tiny(0)
    copy, _ = make_tiny(0)
    copy.config.save_pretrained(d)
    bridge = TransformerBridge.boot_transformers(str(d), hf_model=copy, tokenizer=tok)
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(4, 64, (B, T), generator=g)
    corrupt = torch.randint(4, 64, (B, T), generator=g)
    answer = torch.randint(4, 64, (B,), generator=g)
    wrong = torch.randint(4, 64, (B, 3), generator=g)
    return model, bridge, clean, corrupt, metrics.logit_diff(answer, wrong)


def _final(logits):
    return logits[:, -1].float()


def _tl_cache(bridge, ids):
    with torch.no_grad():
        _, c = bridge.run_with_cache(ids)
    return c


def _tl_run(bridge, ids, hooks):
    with torch.no_grad():
        return _final(bridge.run_with_hooks(ids, fwd_hooks=hooks))


def _replace(src, index):
    def fn(act, hook):
        act = act.clone()
        act[index] = src[index]
        return act
    return fn


def test_head_activation_patch_equals_hand_written(setup):
    model, bridge, clean, corrupt, metric = setup
    dims = Dims.of(model)
    sites = head_sites(dims, pos=-1) + head_sites(dims)  # at the last position, then at every position
    got = activation_patch(model, sites, clean, corrupt, metric, max_batch=5)
    src = _tl_cache(bridge, corrupt)
    base = metric(_tl_run(bridge, clean, []))
    for v, s in enumerate(sites):
        idx = (slice(None), -1 if s.pos == -1 else slice(None), s.head)
        ref = metric(_tl_run(bridge, clean, [(s.hook_name, _replace(src[s.hook_name], idx))])) - base
        assert torch.allclose(got[v], ref, atol=ATOL), s


def test_layer_pos_patch_and_named_positions_equal_hand_written(setup):
    model, bridge, clean, corrupt, metric = setup
    dims = Dims.of(model)
    sites = layer_pos_sites(dims, T)
    got = activation_patch(model, sites, clean, corrupt, metric)
    src = _tl_cache(bridge, corrupt)
    base = metric(_tl_run(bridge, clean, []))
    for v, s in enumerate(sites):
        ref = metric(_tl_run(bridge, clean, [(s.hook_name, _replace(src[s.hook_name], (slice(None), s.pos)))])) - base
        assert torch.allclose(got[v], ref, atol=ATOL), s
    # a per-prompt position ("query") patches a different token in each prompt
    qpos = torch.tensor([1, 3, 2, 5])
    site = Site(1, "attn.hook_z", head=0, pos="query")
    got = activation_patch(model, [site], clean, corrupt, metric, positions={"query": qpos})[0]
    rows = torch.arange(B)
    ref = metric(_tl_run(bridge, clean, [(site.hook_name, _replace(src[site.hook_name], (rows, qpos, 0)))])) - base
    assert torch.allclose(got, ref, atol=ATOL)


def test_batched_patching_does_not_depend_on_chunk_size(setup):
    model, _, clean, corrupt, metric = setup
    sites = head_sites(Dims.of(model), pos=-2)
    a = activation_patch(model, sites, clean, corrupt, metric, max_batch=1)
    b = activation_patch(model, sites, clean, corrupt, metric, max_batch=1000)
    assert torch.allclose(a, b, atol=ATOL) and a.abs().sum() > 0


@pytest.mark.parametrize("n_layers", [2, 5])
def test_all_heads_sweep_forward_passes_grow_with_layers_not_heads(n_layers):
    """Every head of every layer patched: with ``max_batch = n_heads × batch`` the sweep takes one patched forward
    per layer (plus one to cache the source, one unpatched baseline and one for the target's shared prefix, see
    probes/shared_prefix.py), not one per (layer, head)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    n_heads = 4
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=n_layers,
                                         num_attention_heads=n_heads, num_key_value_heads=2, max_position_embeddings=64,
                                         attn_implementation="eager", pad_token_id=0)).eval()
    g = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(4, 64, (2, B, T), generator=g)
    metric = metrics.logit_diff(torch.randint(4, 64, (B,), generator=g), torch.randint(4, 64, (B, 2), generator=g))
    sites = head_sites(Dims.of(model), pos=-1)
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        batched = activation_patch(model, sites, clean, corrupt, metric, max_batch=n_heads * B)
        n_batched = len(calls)
        one_by_one = activation_patch(model, sites, clean, corrupt, metric, max_batch=B)
    finally:
        handle.remove()
    assert len(sites) == n_layers * n_heads
    assert n_batched == n_layers + 3
    assert len(calls) - n_batched == n_layers * n_heads + 3
    assert torch.allclose(batched, one_by_one, atol=ATOL)


def _freeze_all_but(clean_cache, corrupt_cache, sender: Site, n_layers):
    hooks = []
    for layer in range(n_layers):
        name = f"blocks.{layer}.attn.hook_z"

        def fn(act, hook, name=name):
            out = clean_cache[name].clone()
            if name == sender.hook_name:
                out[:, sender.pos, sender.head] = corrupt_cache[name][:, sender.pos, sender.head]
            return out
        hooks.append((name, fn))
    return hooks


def test_path_patch_to_logits_equals_hand_written(setup):
    model, bridge, clean, corrupt, metric = setup
    dims = Dims.of(model)
    senders = head_sites(dims, pos=-1)
    got = path_patch(model, senders, "logits", clean, corrupt, metric)
    cc, cx = _tl_cache(bridge, clean), _tl_cache(bridge, corrupt)
    base = metric(_tl_run(bridge, clean, []))
    for v, s in enumerate(senders):
        ref = metric(_tl_run(bridge, clean, _freeze_all_but(cc, cx, s, dims.n_layers))) - base
        assert torch.allclose(got[v], ref, atol=ATOL), s


@pytest.mark.parametrize("hook", ["attn.hook_q", "attn.hook_v"])
def test_path_patch_to_receiver_inputs_equals_hand_written(setup, hook):
    model, bridge, clean, corrupt, metric = setup
    dims = Dims.of(model)
    receivers = [Site(1, hook, head=0, pos=-1)] + ([Site(1, hook, head=1, pos=-1)] if hook == "attn.hook_q" else [])
    senders = head_sites(dims, pos=-1) + head_sites(dims, pos=2)
    got = path_patch(model, senders, receivers, clean, corrupt, metric)
    cc, cx = _tl_cache(bridge, clean), _tl_cache(bridge, corrupt)
    base = metric(_tl_run(bridge, clean, []))
    for v, s in enumerate(senders):
        if s.layer >= 1:  # no path from layer 1 to a layer-1 input
            assert got[v].abs().max() == 0
            continue
        rec = {}  # step 1: sender from corrupt, every other head frozen; record the receivers' input

        def grab(act, hook):
            rec[receivers[0].hook_name] = act.detach().clone()
        _tl_run(bridge, clean, _freeze_all_but(cc, cx, s, dims.n_layers) + [(receivers[0].hook_name, grab)])
        heads = [r.head for r in receivers]
        ref = metric(_tl_run(bridge, clean, [(receivers[0].hook_name,
                                             _replace(rec[receivers[0].hook_name], (slice(None), -1, heads)))])) - base
        assert torch.allclose(got[v], ref, atol=ATOL), s
        # with every head frozen, a sender at position 2 reaches the last position's inputs by no path
        assert (got[v].abs().max() > 0) == (s.pos == -1)


def test_attribution_patch_equals_hand_written_gradient_times_difference(setup):
    model, bridge, clean, corrupt, metric = setup
    dims = Dims.of(model)
    sites = head_sites(dims, pos=-1) + layer_pos_sites(dims, T)
    got = attribution_patch(model, sites, clean, corrupt, metric)
    src = _tl_cache(bridge, corrupt)
    acts = {}

    def keep(act, hook):
        act.retain_grad()
        acts[hook.name] = act
        return act
    names = sorted({s.hook_name for s in sites})
    out = bridge.run_with_hooks(clean, fwd_hooks=[(n, lambda act, hook, n=n: keep(act, type("Hook", (), {"name": n})))
                                                  for n in names])
    metric(_final(out)).sum().backward()
    for v, s in enumerate(sites):
        a = acts[s.hook_name]
        prod = a.grad * (src[s.hook_name] - a.detach())
        ref = prod[:, s.pos, s.head].sum(-1) if s.head is not None else prod[:, s.pos].sum(-1)
        assert torch.allclose(got[v], ref, atol=1e-5), s
    # per-head estimates track exact patching closely on this model (whole-residual swaps, being far from
    # linear through RMSNorm, need not)
    heads = head_sites(dims, pos=-1)
    exact = activation_patch(model, heads, clean, corrupt, metric)
    r = torch.corrcoef(torch.stack([exact.flatten(), got[: len(heads)].flatten()]))[0, 1]
    assert r > 0.99


def _tuned_copy(seed=0):
    tuned, _ = make_tiny(seed)
    with torch.no_grad():
        g = torch.Generator().manual_seed(9)
        for p in tuned.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return tuned


def test_cmap_equals_hand_written_cross_model_patch(setup):
    model, bridge, clean, _, metric = setup
    tuned = _tuned_copy()
    groups = {"a": [Site(0, "attn.hook_z", head=1, pos=-1)], "ab": [Site(0, "attn.hook_z", head=1, pos=-1),
                                                                  Site(1, "attn.hook_z", head=0)]}
    res = cmap(model, tuned, groups, clean, metric)
    tz = cache(tuned, clean, ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"])
    ref_a = metric(_tl_run(bridge, clean, [("blocks.0.attn.hook_z", _replace(tz["blocks.0.attn.hook_z"], (slice(None), -1, 1)))]))
    ref_ab = metric(_tl_run(bridge, clean, [
        ("blocks.0.attn.hook_z", _replace(tz["blocks.0.attn.hook_z"], (slice(None), -1, 1))),
        ("blocks.1.attn.hook_z", _replace(tz["blocks.1.attn.hook_z"], (slice(None), slice(None), 0)))]))
    assert res.patched["a"] == pytest.approx(float(ref_a.mean()), abs=ATOL)
    assert res.patched["ab"] == pytest.approx(float(ref_ab.mean()), abs=ATOL)
    with torch.no_grad():
        assert res.tuned_score == pytest.approx(float(metric(tuned(clean).logits[:, -1]).mean()), abs=ATOL)
    all_heads = cmap(model, tuned, {"all": head_sites(Dims.of(model))}, clean, metric)
    assert all_heads.patched["all"] != pytest.approx(all_heads.base_score)
    wide, _ = make_tiny(0, hidden_size=32)
    with pytest.raises(MismatchError, match="different shapes"):
        cmap(model, wide, groups, clean, metric)


def test_faithfulness_equals_hand_written_mean_ablation(setup):
    model, bridge, clean, corrupt, metric = setup
    dims = Dims.of(model)
    ref_ids = torch.cat([clean, corrupt])
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(dims.n_layers)]
    means = mean_activations(model, ref_ids, names)
    tl = _tl_cache(bridge, ref_ids)
    for n in names:
        assert torch.allclose(means[n][0], tl[n].mean(0), atol=1e-6)
    circuit = [Site(0, "attn.hook_z", head=1, pos=-1), Site(1, "attn.hook_z", head=0)]
    res = faithfulness(model, circuit, clean, metric, means, n_random=3, seed=1)

    def ablate(name, keep):
        def fn(act, hook):
            out = means[name][0].expand_as(act).clone()
            for pos, head in keep:
                out[:, pos, head] = act[:, pos, head]
            return out
        return fn
    ref = metric(_tl_run(bridge, clean, [(names[0], ablate(names[0], [(-1, 1)])),
                                         (names[1], ablate(names[1], [(slice(None), 0)]))]))
    assert res.circuit_score == pytest.approx(float(ref.mean()), abs=ATOL)
    assert res.model_score == pytest.approx(float(metric(_tl_run(bridge, clean, [])).mean()), abs=ATOL)
    assert len(res.random_scores) == 3 and res.n_sites == 2
    whole = faithfulness(model, head_sites(dims), clean, metric, means, n_random=0)
    assert whole.faithfulness == pytest.approx(1.0, abs=1e-5)
    rc = random_circuit(circuit, dims, __import__("random").Random(0))
    assert [s.pos for s in rc] == [-1, None] and len(set(rc)) == 2


def test_dcm_mask_mixes_original_and_counterfactual(setup):
    model, _, clean, corrupt, metric = setup
    dims = Dims.of(model)
    heads = head_sites(dims, pos=-1)
    names = sorted({h.hook_name for h in heads})
    zo, zc = cache(model, clean, names), cache(model, corrupt, names)
    side = Side(model)
    with torch.no_grad():
        ones = _mixed(side, heads, dims, clean, zo, zc, torch.ones(len(heads)), None)
        zeros = _mixed(side, heads, dims, clean, zo, zc, torch.zeros(len(heads)), None)
        assert torch.allclose(ones, model(clean).logits[:, -1], atol=ATOL)
        exact = activation_patch(model, [heads], clean, corrupt, metric)[0]
        assert torch.allclose(metric(zeros) - metric(ones), exact, atol=ATOL)


def test_dcm_learns_a_mask_and_lambda_keeps_heads(setup):
    model, _, clean, corrupt, _ = setup
    heads = head_sites(Dims.of(model), pos=-1)
    ids = torch.cat([clean, clean]), torch.cat([corrupt, corrupt])
    with torch.no_grad():
        target = model(ids[1]).logits[:, -1].argmax(-1)  # the counterfactual's own answer
    cand = torch.stack([target, (target + 1) % 64], 1)
    res = dcm(model, heads, *ids, target, cand, DCMConfig(steps=30, batch_size=4))
    assert len(res.mask) == len(heads) and all(0 <= m <= 1 for m in res.mask)
    assert res.losses[-1] < res.losses[0]
    assert set(res.selected) <= set(heads) and 0 <= res.accuracy <= 1
    heavy = dcm(model, heads, *ids, target, cand, DCMConfig(steps=10, batch_size=4, lam=1e4))
    assert heavy.selected == [] and heavy.mask == [1.0] * len(heads)
    with pytest.raises(ConfigError, match="candidates"):
        dcm(model, heads, *ids, target, torch.stack([(target + 1) % 64, (target + 2) % 64], 1), DCMConfig(steps=1))
    with pytest.raises(ConfigError, match="invalid DCMConfig"):
        DCMConfig(lr=0)


def test_clear_errors(setup, tiny_tok):
    model, _, clean, corrupt, metric = setup
    _, tok = tiny_tok
    with pytest.raises(ConfigError, match="unequal token lengths"):
        equal_length_ids(tok, ["w5 w6 w7", "w5 w6"], prepend_bos=False)
    assert equal_length_ids(tok, ["w5 w6", "w7 w8"], prepend_bos=True)[:, 0].tolist() == [2, 2]
    with pytest.raises(ConfigError, match="head 2 out of range"):
        activation_patch(model, [Site(0, "attn.hook_z", head=2)], clean, corrupt, metric)
    with pytest.raises(ConfigError, match="head 1 out of range"):  # one key-value head in this model
        path_patch(model, head_sites(Dims.of(model)), [Site(1, "attn.hook_v", head=1)], clean, corrupt, metric)
    with pytest.raises(ConfigError, match="layer 5 does not exist"):
        activation_patch(model, [Site(5, "hook_resid_pre")], clean, corrupt, metric)
    with pytest.raises(ConfigError, match="same \\[batch, pos\\] shape"):
        activation_patch(model, [Site(0, "hook_resid_pre")], clean, corrupt[:, :-1], metric)
    with pytest.raises(ConfigError, match="position name 'query' not given"):
        activation_patch(model, [Site(0, "hook_resid_pre", pos="query")], clean, corrupt, metric)
    with pytest.raises(ConfigError, match="outside prompts of length"):
        activation_patch(model, [Site(0, "hook_resid_pre", pos=T)], clean, corrupt, metric)
    with pytest.raises(ConfigError, match="receivers must be"):
        path_patch(model, head_sites(Dims.of(model)), [Site(1, "attn.hook_z", head=0)], clean, corrupt, metric)
    with pytest.raises(ConfigError, match="circuit is empty"):
        faithfulness(model, [], clean, metric, {})
    with pytest.raises(ConfigError, match="expected 4 head effects"):
        as_head_scores(torch.zeros(3, B), Dims.of(model))


def test_pair_with_different_tokenizers_is_refused(tiny_tok):
    from workbench.pair import ModelPair
    from conftest import tiny_info

    _, tok = tiny_tok
    base, info = make_tiny(0)
    tuned, tinfo = make_tiny(1)

    class OtherVocab:
        def get_vocab(self):
            return {"x": 0}
    with pytest.raises(MismatchError, match="different vocabularies"):
        ModelPair(base, tuned, tok, info, tinfo, tuned_tokenizer=OtherVocab())
    pair = ModelPair(base, tuned, tok, info, tiny_info(tuned, "t"))
    assert Side.of(pair, "tuned").model is tuned
    with pytest.raises(ConfigError, match="role must be"):
        Side.of(pair, "other")
