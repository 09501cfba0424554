"""CAFT (concept ablation fine-tuning) on the tiny Llama, and the spurious-cue task on SmolLM2's tokenizer."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny
from workbench.errors import CheckpointError, ConfigError
from workbench.hooked import add_hook, hook_count
from workbench.methods import get_method, load_intervention, save_intervention
from workbench.methods.caft import (CaftConfig, CaftIntervention, choose_concept_components, difference_of_means,
                                    evaluate_with_ablation, pca_directions, probe_direction, random_directions,
                                    residuals, save_directions, train_caft)
from workbench.methods.lofit import LofitConfig, LofitOffsets
from workbench.sites import Site
from workbench.tasks.spurious_cue import (NOUNS, PRONOUNS, SpuriousCueConfig, concept_cue_prompts, concept_prompts,
                                          generate, option_logit_diff, to_examples, to_tensors)
from workbench.train import TrainConfig, fit

IDS = torch.tensor([[5, 9, 3, 7, 11, 2], [4, 4, 8, 1, 60, 33]])
D = 16  # tiny d_model


def raw_directions(k: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    """Deliberately non-orthonormal rows: random scales and a shared component."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(k, D, generator=g) * scale
    return rows + rows[:1] * 0.5 * (torch.arange(k)[:, None] > 0)


def ablation(info, layers=(0, 1), k=3, seed=0) -> CaftIntervention:
    return CaftIntervention.from_directions({l: raw_directions(k, seed + l) for l in layers}, info.to_dict(), source="test")


def offsets(info, std=0.0):
    cfg = LofitConfig(top_k_heads=2, heads=[[0, 1], [1, 0]], init_std=std)
    return LofitOffsets(cfg, info.to_dict(), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


# --- the ablation -------------------------------------------------------------------------------
def test_ablated_activation_has_no_component_along_q(tiny):
    model, info = tiny
    abl = ablation(info)
    before, n_hooks, seen = logits(model), hook_count(model), {}
    with abl.attach(model):  # read-only hooks registered later run after the ablation on the same module
        handles = [add_hook(model, Site(l, "hook_resid_post"), lambda a, l=l: seen.__setitem__(l, a.detach().clone())) for l in (0, 1)]
        after = logits(model)
        for h in handles:
            h.remove()
    for layer in (0, 1):
        assert seen[layer].dtype == torch.float32 and (seen[layer] @ abl.basis(layer)).abs().max() < 1e-5
    assert not torch.allclose(before, after)  # it does ablate something
    assert hook_count(model) == n_hooks and torch.equal(logits(model), before)  # and is gone afterwards


def test_ablation_in_bf16_is_computed_in_fp32_and_cast_back():
    model, info = make_tiny(0)
    abl = ablation(info, layers=(1,), k=2)
    act, q = torch.randn(2, 5, D).to(torch.bfloat16), abl.basis(1)
    out, expected = abl.apply(Site(1, "hook_resid_post"), act), (act.float() - act.float() @ q @ q.T).to(torch.bfloat16)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)


def test_non_orthonormal_input_is_orthonormalised(tiny):
    rows = raw_directions(4, seed=3)
    abl = CaftIntervention.from_directions({1: rows}, tiny[1].to_dict())
    q_ref, _ = torch.linalg.qr(rows.double().T)
    assert torch.allclose(abl.projector(1).double(), q_ref @ q_ref.T, atol=1e-6)
    q = abl.basis(1).double()
    assert torch.allclose(q.T @ q, torch.eye(4, dtype=torch.float64), atol=1e-6)
    # the projector is that of the span of the rows, whatever their scale
    a = rows.double().T
    assert torch.allclose(abl.projector(1).double(), a @ torch.linalg.solve(a.T @ a, a.T), atol=1e-5)


@pytest.mark.parametrize("directions, match", [
    ({1: torch.randn(2, D + 1)}, "width must be d_model = 16"),
    ({1: torch.stack([torch.ones(D), 2 * torch.ones(D)])}, "rank-deficient"),
    ({1: torch.zeros(2, D)}, "rank-deficient"),
    ({1: torch.full((2, D), float("nan"))}, "NaN or inf"),
])
def test_bad_directions_are_refused(tiny, directions, match):
    _, info = tiny
    with pytest.raises(ConfigError, match=match):
        CaftIntervention.from_directions(directions, info.to_dict())


def test_layer_that_does_not_exist_and_config_errors(tiny):
    _, info = tiny
    with pytest.raises(ConfigError, match="layer 5 does not exist"):
        CaftIntervention.from_directions({5: torch.randn(1, D)}, info.to_dict())
    abl = CaftIntervention(CaftConfig(layers=[0, 1], n_directions=2), info.to_dict())
    with pytest.raises(ConfigError, match="directions given for layers \\[0\\]"):
        abl.set_directions({0: torch.randn(2, D)})
    with pytest.raises(ConfigError, match="3 directions given, the config says 2"):
        abl.set_directions({0: torch.randn(3, D), 1: torch.randn(2, D)})
    with pytest.raises(ConfigError, match="not orthonormal"), abl.attach(tiny[0]):  # never set: refuses a zero basis
        pass
    for kwargs in (dict(layers=[]), dict(layers=[0, 0], n_directions=1), dict(layers=[0], n_directions=[0]),
                   dict(layers=[0, 1], n_directions=[1])):
        with pytest.raises(ConfigError):
            CaftConfig(**kwargs)


def test_save_load_round_trip_is_exact(tiny, tmp_path):
    (model, info), abl = tiny, ablation(tiny[1])
    save_intervention(tmp_path / "caft", abl, info)
    loaded = load_intervention(tmp_path / "caft", info)
    assert get_method("caft").intervention_cls is CaftIntervention and isinstance(loaded, CaftIntervention)
    assert loaded.config == abl.config and all(torch.equal(loaded.basis(l), abl.basis(l)) for l in (0, 1))
    with abl.attach(model):
        a = logits(model)
    with loaded.attach(model):
        assert torch.equal(logits(model), a)


# --- training under the ablation ----------------------------------------------------------------
def test_training_with_ablation_lowers_the_loss_and_leaves_no_hook(tiny, tiny_examples, tmp_path):
    model, info = tiny
    n_hooks = hook_count(model)
    inner = offsets(info)
    cfg = TrainConfig(max_steps=20, lr=0.1, batch_size_prompts=32, checkpoint_every_steps=0, progress=False)
    run = train_caft(model, info.to_dict(), tiny_examples, ablation(info, k=2), train_method=inner, train_cfg=cfg,
                     out_dir=tmp_path / "run")
    assert run.inner is inner and run.result.losses[-1] < run.result.losses[0] - 0.1
    assert hook_count(model) == n_hooks
    assert (tmp_path / "run" / "ablation.safetensors").is_file()
    with pytest.raises(CheckpointError, match="other ablation directions"):  # resuming under other directions
        train_caft(model, info.to_dict(), tiny_examples, ablation(info, k=2, seed=9), train_method=offsets(info),
                   train_cfg=cfg, out_dir=tmp_path / "run")


def test_registered_methods_train_under_ablation(tiny_examples):
    model, info = make_tiny(0)
    before = logits(model)
    run = train_caft(model, info.to_dict(), tiny_examples, ablation(info, k=2), train_method="full",
                     train_cfg=TrainConfig(max_steps=15, lr=1e-2, progress=False))
    assert run.result.losses[-1] < run.result.losses[0] - 0.5 and hook_count(model) == 0
    assert torch.equal(logits(model), before)  # "full" keeps its deltas outside the model
    with run.inner.attach(model):
        assert not torch.allclose(logits(model), before)
    cfg = LofitConfig(top_k_heads=2, select=TrainConfig(max_steps=5, lr=5e-3, progress=False))
    run = train_caft(model, info.to_dict(), tiny_examples, ablation(info, k=2), train_method="lofit", method_config=cfg,
                     train_cfg=TrainConfig(max_steps=20, lr=0.1, batch_size_prompts=32, progress=False))
    assert len(run.details["heads"]) == 2 and isinstance(run.inner, LofitOffsets)  # both LoFiT steps ran
    assert run.result.losses[-1] < run.result.losses[0] and hook_count(model) == 0


def test_finetune_caft_reads_directions_from_file(tiny_examples, tmp_path):
    from workbench.finetune import finetune

    model, info = make_tiny(0)
    abl = ablation(info, k=2)
    config = {**save_directions(abl, tmp_path / "dirs.safetensors"), "inner": "full"}
    result = finetune("caft", model, info, tiny_examples, config, {"max_steps": 10, "lr": 1e-2, "progress": False})
    assert result.intervention is result.details["evaluate_with"] and result.intervention.method == "full"
    assert torch.equal(result.details["ablation"].basis(1), abl.basis(1)) and hook_count(model) == 0
    assert result.train_result.losses[-1] < result.train_result.losses[0]
    with pytest.raises(ConfigError, match="CAFT needs directions"):
        finetune("caft", model, info, tiny_examples, {"layers": [0], "n_directions": [2]})
    with pytest.raises(CheckpointError, match="does not match layers"):
        finetune("caft", model, info, tiny_examples, {**config, "n_directions": [1, 2]})


def test_no_ablation_baseline_is_plain_fit_and_ablation_changes_training(tiny_examples):
    cfg, (model, info) = TrainConfig(max_steps=4, lr=0.1, batch_size_prompts=8, progress=False), make_tiny(0)
    plain = fit(model, offsets(info), tiny_examples, cfg).losses  # offsets train outside the (unchanged) model
    runs = [train_caft(model, info.to_dict(), tiny_examples, a, train_method=offsets(info), train_cfg=cfg).result.losses
            for a in (None, ablation(info))]
    assert runs[0] == plain and runs[1] != plain


def test_no_hook_remains_after_an_exception(tiny, tiny_examples):
    model, info = tiny

    def boom():
        raise RuntimeError("eval failed")

    with pytest.raises(RuntimeError, match="eval failed"):
        train_caft(model, info.to_dict(), tiny_examples, ablation(info), train_method=offsets(info, 1e-2),
                   train_cfg=TrainConfig(max_steps=2, lr=1e-2, progress=False), eval_fn=boom)
    assert hook_count(model) == 0
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        train_caft(model, info.to_dict(), tiny_examples, ablation(info), train_method="nope")
    with pytest.raises(ConfigError, match="must be a LofitConfig or a dict"):
        train_caft(model, info.to_dict(), tiny_examples, ablation(info), method_config=TrainConfig())
    with pytest.raises(ConfigError, match="has no trainable parameters"):  # the ablation alone trains nothing
        train_caft(model, info.to_dict(), tiny_examples, ablation(info), train_method=ablation(info))
    assert hook_count(model) == 0


def test_evaluation_sees_the_plain_model_and_test_time_baseline_sees_the_ablation(tiny, tiny_examples):
    model, info = tiny
    abl, inner = ablation(info), offsets(info, 1e-2)
    seen = {}

    def ev():
        seen["during"] = logits(model)
        return {}

    train_caft(model, info.to_dict(), tiny_examples, abl, train_method=inner,
               train_cfg=TrainConfig(max_steps=3, lr=1e-2, progress=False), eval_fn=ev)
    with inner.attach(model):
        plain = logits(model)
        ablated = evaluate_with_ablation(model, abl, lambda: {"logits": logits(model)})["logits"]
    assert torch.equal(seen["during"], plain)  # eval_fn ran with the ablation suspended
    assert not torch.allclose(ablated, plain) and hook_count(model) == 0


# --- direction finders --------------------------------------------------------------------------
def test_residuals_read_the_requested_positions(tiny):
    model, info = tiny
    prompts = [[5, 9, 3, 7], [4, 4, 8, 1, 60, 33]]
    full, h = {}, add_hook(model, Site(1, "hook_resid_post"), lambda a: full.__setitem__("x", a.detach().clone()))
    model(input_ids=torch.tensor([prompts[1]]))
    h.remove()
    got = residuals(model, prompts, [0, 1], [[-1], [2, -1]])
    assert got[1].shape == (3, D) and torch.allclose(got[1][1], full["x"][0, 2], atol=1e-6)
    assert torch.allclose(got[1][2], full["x"][0, 5], atol=1e-6)
    with pytest.raises(ConfigError, match="outside a prompt"):
        residuals(model, prompts, [0], [[4], [0]])


def test_pca_of_tuned_minus_base_finds_the_offset_direction(tiny):
    model, info = tiny
    inner = offsets(info, std=0.5)  # the "tuned" model: base + LoFiT offsets
    prompts = [torch.randint(3, 64, (6,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(12)]
    res = pca_directions(model, model, prompts, None, [0, 1], n_components=4, tuned_intervention=inner)
    r = res[0]
    assert r.components.shape == (4, D) and r.n_tokens == 12
    assert torch.allclose(r.components @ r.components.T, torch.eye(4), atol=1e-5)
    assert (r.explained_variance_ratio[:-1] >= r.explained_variance_ratio[1:]).all()
    # layer 0's shift is W_O v plus its nonlinear echo: the mean difference lies mostly along it
    o = model.model.layers[0].self_attn.o_proj
    wov = o.weight @ inner.layer_offsets(0).flatten()
    cos = torch.nn.functional.cosine_similarity(r.mean_difference, wov.detach(), dim=0)
    assert cos > 0.9
    with pytest.raises(ConfigError, match="n_components=20"):
        pca_directions(model, model, prompts, None, [0], n_components=20, tuned_intervention=inner)


def test_component_choice_ranks_the_concept_component_first(tiny):
    model, info = tiny
    g = torch.Generator().manual_seed(0)
    prompts, labels = [], []
    for i in range(40):  # the label is the last token (5 or 9); everything before is noise
        label = i % 2
        prompts.append(torch.randint(12, 64, (5,), generator=g).tolist() + [9 if label else 5])
        labels.append(label)
    acts = residuals(model, prompts, [1])[1]
    lab = torch.tensor(labels)
    concept = difference_of_means(acts[lab == 1], acts[lab == 0])
    others = random_directions(D, 2, seed=1)
    others = torch.nn.functional.normalize(others - (others @ concept)[:, None] * concept, dim=1)  # ⊥ concept
    comps = torch.cat([others, concept[None]])
    choice = choose_concept_components(comps, model, 1, prompts, labels, top_n=1)
    assert choice.indices == [2] and choice.ranking[0] == 2 and choice.scores[2] > 0.95
    assert choice.scores[:2].max() < 0.8
    manual = choose_concept_components(comps, model, 1, prompts, labels, top_n=1, indices=[0, 1])
    assert manual.indices == [0, 1] and manual.ranking == choice.ranking
    # read at other positions: the label token moved to position 2, followed by noise
    moved = [p[:2] + [p[-1]] + p[2:5] for p in prompts]
    acts2 = residuals(model, moved, [1], [[2]] * len(moved))[1]
    concept2 = difference_of_means(acts2[lab == 1], acts2[lab == 0])
    other = random_directions(D, 1, seed=2)
    other = torch.nn.functional.normalize(other - (other @ concept2)[:, None] * concept2, dim=1)
    comps2 = torch.cat([other, concept2[None]])
    at_2 = choose_concept_components(comps2, model, 1, moved, labels, top_n=1, positions=[[2]] * 40)
    assert at_2.indices == [1] and at_2.scores[1] > 0.95 and at_2.scores[0] < 0.8
    with pytest.raises(ConfigError, match="same number of positions"):
        choose_concept_components(comps2, model, 1, moved, labels, top_n=1, positions=[[2]] * 39 + [[1, 2]])
    with pytest.raises(ConfigError, match="top_n=5"):
        choose_concept_components(comps, model, 1, prompts, labels, top_n=5)


def test_user_directions_recover_a_planted_direction():
    g = torch.Generator().manual_seed(0)
    planted = torch.nn.functional.normalize(torch.randn(D, generator=g), dim=0)
    labels = torch.arange(200) % 2
    acts = torch.randn(200, D, generator=g) * 0.3 + (2 * labels[:, None] - 1) * planted
    dom = difference_of_means(acts[labels == 1], acts[labels == 0])
    probe = probe_direction(acts, labels.tolist())
    assert float(dom @ planted) > 0.95 and float(probe @ planted) > 0.9
    assert abs(float(dom.norm()) - 1) < 1e-6 and abs(float(probe.norm()) - 1) < 1e-6
    r = random_directions(D, 3, seed=4)
    assert torch.allclose(r @ r.T, torch.eye(3), atol=1e-6) and torch.equal(r, random_directions(D, 3, seed=4))
    assert not torch.equal(r, random_directions(D, 3, seed=5))
    with pytest.raises(ConfigError, match="identical means"):
        difference_of_means(acts, acts)
    with pytest.raises(ConfigError, match="exactly two classes"):
        probe_direction(acts, [0] * 200)


# --- spurious-cue task (real SmolLM2 tokenizer) -------------------------------------------------
@pytest.fixture(scope="module")
def smol_tok():
    from conftest import smollm2_tokenizer

    return smollm2_tokenizer()  # skips with the reason when the model package is missing


GENDER_OF = {"he": "male", "him": "male", "she": "female", "her": "female"}


def _cue_a(p) -> str:
    """The answer grammar gives, recomputed from the prompt's parts."""
    if p.design == "choice":
        return next(o for o in p.options if PRONOUNS[(p.slot, GENDER_OF[o])] == o)
    return "yes" if PRONOUNS[(p.slot, GENDER_OF[p.pronoun])] == p.pronoun else "no"


def _cue_b(p) -> str:
    """The answer the noun's gender gives (the training correlation)."""
    if p.design == "choice":
        return next(o for o in p.options if GENDER_OF[o] == p.noun_gender)
    return "yes" if p.noun_gender == "female" else "no"


@pytest.mark.parametrize("design, nouns", [("judgement", "kinship"), ("judgement", "professions"), ("choice", "kinship")])
def test_spurious_cue_invariants(smol_tok, design, nouns):
    cfg = SpuriousCueConfig(n_train=200, n_heldout=100, n_ood=100, nouns=nouns, design=design, seed=3)
    split = generate(smol_tok, cfg)
    assert (len(split.train), len(split.heldout), len(split.ood)) == (200, 100, 100)
    for name, prompts, agree in (("train", split.train, True), ("heldout", split.heldout, True), ("ood", split.ood, False)):
        for p in prompts:
            assert p.answer == " " + _cue_a(p), (name, p.text)  # cue A (grammar) decides the label everywhere
            assert (_cue_b(p) == _cue_a(p)) is agree and p.cues_agree is agree, (name, p.text)  # cue B
            assert GENDER_OF[p.pronoun] == p.noun_gender or design == "choice"  # the pronoun refers to the noun
            assert p.noun in p.text and p.pronoun in p.text.split(" Answer:")[0]
            other = ({*p.options} - {p.answer.strip()}).pop()
            assert smol_tok.decode([p.answer_id]) == p.answer and smol_tok.decode([p.other_id]) == " " + other
            assert list(p.input_ids) == smol_tok(p.text, add_special_tokens=False)["input_ids"]
            assert smol_tok.decode([p.input_ids[p.noun_pos]]) == " " + p.noun
            written = smol_tok.decode([p.input_ids[p.pronoun_pos]])
            assert written == " " + p.pronoun if design == "judgement" else written.strip().startswith("__")
        assert {p.slot for p in prompts} == {"subject", "object"} and {p.noun_gender for p in prompts} == {"male", "female"}
        assert {p.answer for p in prompts} == {" " + o for o in prompts[0].options} or design == "choice"
    texts = [{p.text for p in s} for s in (split.train, split.heldout, split.ood)]
    assert sum(map(len, texts)) == 400  # unique within splits, and no overlap between them
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert len({len(p.input_ids) for s in (split.train, split.heldout, split.ood) for p in s}) == 1
    again = generate(smol_tok, cfg)
    assert [p.text for p in again.train + again.ood] == [p.text for p in split.train + split.ood]
    other_seed = generate(smol_tok, SpuriousCueConfig(n_train=200, n_heldout=100, n_ood=100, nouns=nouns, design=design, seed=4))
    assert [p.text for p in other_seed.train] != [p.text for p in split.train]
    examples = to_examples(split.train)
    assert examples[0].prompt_ids == split.train[0].input_ids and examples[0].answer_ids == (split.train[0].answer_id,)


@pytest.mark.parametrize("design", ["judgement", "choice"])
def test_concept_prompts_use_other_nouns_and_balance_labels(smol_tok, design):
    prompts = concept_cue_prompts(smol_tok, task_nouns="kinship", n=64, design=design)
    ids, labels = concept_prompts(smol_tok, task_nouns="kinship", n=64, design=design)
    assert len(prompts) == 64 and sum(labels) == 32 and len({p.text for p in prompts}) == 64
    assert labels == [int(p.noun_gender == "female") for p in prompts] and ids == [p.input_ids for p in prompts]
    assert {p.noun for p in prompts} <= set(NOUNS["professions"]["female"] + NOUNS["professions"]["male"])
    for label in (0, 1):  # slot and answer are balanced within each label: only gender separates them
        group = [p for p, y in zip(prompts, labels) if y == label]
        assert sum(p.slot == "subject" for p in group) == 16
        counts = sorted(sum(p.answer == a for p in group) for a in {p.answer for p in group})
        assert counts == ([8, 8, 8, 8] if design == "choice" else [16, 16])


def test_spurious_cue_metric_and_config_errors(smol_tok):
    from types import SimpleNamespace

    from workbench.tasks.spurious_cue import evaluate

    split = generate(smol_tok, SpuriousCueConfig(n_train=4, n_heldout=4, n_ood=4))
    _, ans, oth = to_tensors(split.ood)
    logits = torch.zeros(4, len(smol_tok))
    logits[torch.arange(4), ans], logits[torch.arange(4), oth] = 2.0, torch.tensor([1.0, 3.0, 1.0, 1.0])
    assert option_logit_diff(logits, ans, oth).tolist() == [1.0, -1.0, 1.0, 1.0]

    class Fixed(torch.nn.Module):  # returns those logits at the last position, whatever the input
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, logits_to_keep=0):
            return SimpleNamespace(logits=logits[: len(input_ids), None, :])

    assert evaluate(Fixed(), split.ood, batch_size=4) == {"accuracy": 0.75, "logit_diff": 0.5}
    for bad, match in ((dict(n_train=0), "integer >= 1"), (dict(nouns="names"), "nouns must be one of"),
                       (dict(design="cloze"), "design must be one of")):
        with pytest.raises(ConfigError, match=match):
            SpuriousCueConfig(**bad)
    with pytest.raises(ConfigError, match="pool holds"):
        generate(smol_tok, SpuriousCueConfig(n_train=5000))
