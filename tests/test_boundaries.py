"""API boundaries (issue 13, classes 4-6): bad input ends in one clear WorkbenchError, never a raw traceback.

* pickle checkpoints (model directories, peft adapters, hub snapshots, our own adapters) are refused before
  anything is unpickled — checked with a crafted pickle whose ``__reduce__`` would write a file;
* an uncached hub id with the hub unreachable fails without trying the network; a cached one still loads offline;
* token ids may be tensors or ``list[list[int]]``; everything else is refused with ConfigError naming the argument;
* ModelPair notices two different tokenizers of equal size from the fingerprints recorded at load time.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_tiny
from network_guard import network_attempts

from workbench.data import Example
from workbench.errors import (
    CheckpointError,
    ConfigError,
    MismatchError,
    ModelNotFoundError,
    WorkbenchError,
)
from workbench.sites import Site

TRACEBACK_PRONE = (AttributeError, TypeError, KeyError, IndexError, pickle.UnpicklingError)


# ----------------------------------------------------------------------------- helpers
class _Payload:
    """Unpickling this runs ``exec``: it writes ``marker``. Nothing of ours may ever unpickle it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('payload ran')",))


def _evil(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(_Payload(marker)))
    return path


def _word_tokenizer(prefix: str):
    """A 64-token word-level tokenizer; two prefixes give equal-size tokenizers with different vocabularies."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tmodels
    from transformers import PreTrainedTokenizerFast

    vocab = {f"{prefix}{i}": i for i in range(63)} | {"<unk>": 63}
    tk = Tokenizer(tmodels.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")


def _save_tiny(directory: Path, prefix: str = "w", seed: int = 0) -> Path:
    model, _ = make_tiny(seed)
    model.save_pretrained(directory)
    _word_tokenizer(prefix).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "PAYLOAD_RAN"


def test_the_payload_is_live(tmp_path):
    """The crafted pickle really runs code when unpickled: the refusals below are meaningful."""
    live = tmp_path / "live"
    pickle.loads(_evil(tmp_path / "x.bin", live).read_bytes())
    assert live.read_text() == "payload ran"


# ----------------------------------------------------------------------------- 4. pickle checkpoints
def _pickle_model_dir(src: Path, dst: Path, weights: str, marker: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "model.safetensors").unlink()
    _evil(dst / weights, marker)
    return dst


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.bin", "model.pt", "weights.pth", "model.ckpt"])
def test_pickle_only_model_directory_is_refused_unopened(tiny_dir, tmp_path, marker, weights):
    from workbench.models.load import load_model

    d = _pickle_model_dir(tiny_dir, tmp_path / "m", weights, marker)
    with pytest.raises(CheckpointError, match="only as pickle") as ei:
        load_model(d, device="cpu")
    assert "safe_serialization=True" in str(ei.value) and weights in str(ei.value)
    assert not marker.exists()


def test_pickle_only_peft_adapter_is_refused_unopened(tiny_dir, tmp_path, marker):
    from workbench.models.load import load_model

    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_dir), "peft_type": "LORA",
                                                       "r": 2, "target_modules": ["q_proj"]}))
    _evil(d / "adapter_model.bin", marker)
    with pytest.raises(CheckpointError, match="PeftModel.from_pretrained"):
        load_model(d, device="cpu")
    assert not marker.exists()


def test_safetensors_beside_trainer_pickles_still_loads(tiny_dir, tmp_path, marker):
    from workbench.models.load import load_model

    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    _evil(d / "training_args.bin", marker)
    _, _, info = load_model(d, device="cpu")
    assert info.n_layers == 2 and not marker.exists()


def _fake_hub_cache(root: Path, repo: str, src: Path) -> Path:
    """An HF hub cache holding ``repo`` as a snapshot copied from ``src`` (plain files, no blobs/symlinks)."""
    base = root / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(src, base / "snapshots" / commit)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    return base / "snapshots" / commit


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """The hub is unreachable (the probe says so, no env var) and the HF cache is an empty temp folder."""
    import huggingface_hub.constants as hc

    from workbench.models import load as load_mod

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(load_mod, "_HUB", {})
    monkeypatch.setattr(load_mod, "_probe_hub", lambda timeout_s: False)
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    return cache


def test_pickle_only_hub_snapshot_is_refused_unopened(offline_hub, tiny_dir, tmp_path, marker):
    from workbench.models.load import load_model

    snap = _fake_hub_cache(offline_hub, "wbtest/pickled", tiny_dir)
    (snap / "model.safetensors").unlink()
    _evil(snap / "pytorch_model.bin", marker)
    with pytest.raises(CheckpointError, match="Hugging Face repo 'wbtest/pickled'"):
        load_model("wbtest/pickled", device="cpu")
    assert not marker.exists()


def test_our_adapter_as_pickle_is_refused_unopened(tiny, tmp_path, marker):
    from workbench.artifacts import load_tensors
    from workbench.methods import load_intervention, save_intervention
    from workbench.methods.lofit import LofitConfig, LofitOffsets

    _, info = tiny
    inter = LofitOffsets(LofitConfig(top_k_heads=1, heads=[[0, 1]], init_std=0.5), info.to_dict())
    d = save_intervention(tmp_path / "adapter", inter, info)
    (d / "adapter.safetensors").unlink()
    _evil(d / "adapter.pt", marker)
    with pytest.raises(CheckpointError, match="safetensors.torch.save_file"):
        load_intervention(d, info)
    _evil(d / "adapter.safetensors", marker)  # a pickle under the safetensors name
    with pytest.raises(CheckpointError, match="only as pickle"):
        load_tensors(d / "adapter.safetensors")
    assert not marker.exists()


def test_app_refuses_a_pickled_tuned_side(tiny_dir, tmp_path, marker):
    from workbench.models.tuned import load_pair

    model_dir = _pickle_model_dir(tiny_dir, tmp_path / "m", "pytorch_model.bin", marker)
    peft_dir = tmp_path / "peft"
    peft_dir.mkdir()
    (peft_dir / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_dir)}))
    _evil(peft_dir / "adapter_model.bin", marker)
    for tuned in (model_dir, peft_dir):
        with pytest.raises(CheckpointError, match="only as pickle"):
            load_pair(str(tiny_dir), str(tuned), device="cpu")
    assert not marker.exists()


# ----------------------------------------------------------------------------- 5. offline hub ids
@pytest.mark.parametrize("how", ["env", "probe"])
def test_uncached_hub_id_fails_offline_without_trying_the_network(offline_hub, monkeypatch, how):
    from huggingface_hub.utils import build_hf_headers

    from workbench.models.load import load_model

    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with network_attempts():  # huggingface_hub >= 2.4 fetches an agent registry (3 s timeout) once per process when it
        build_hf_headers()  # first builds request headers, unless HF_HUB_OFFLINE was set at its import: done here first
    # "fails fast": nothing tries the network (the hub client's retries are what took ~50 s), counted, not timed
    with network_attempts() as attempts, pytest.raises(ModelNotFoundError, match="Hugging Face hub is unreachable") as ei:
        load_model("wbtest/not-cached", device="cpu")
    assert attempts == [], f"an unreachable hub was tried: {attempts}"
    assert "wbtest/not-cached" in str(ei.value)


def test_cached_hub_id_still_loads_offline(offline_hub, tiny_dir):
    from workbench.models.load import load_model

    _fake_hub_cache(offline_hub, "wbtest/tiny", tiny_dir)
    _, _, info = load_model("wbtest/tiny", device="cpu")
    assert info.id == "wbtest/tiny" and info.n_layers == 2 and info.tokenizer_hash.startswith("sha256:")


def test_hub_probe_runs_once_per_process(monkeypatch):
    import huggingface_hub.constants as hc

    from workbench.models import load as load_mod

    calls = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(load_mod, "_HUB", {})
    monkeypatch.setattr(load_mod, "_probe_hub", lambda timeout_s: calls.append(timeout_s) or False)
    assert load_mod.hub_reachable() is False and load_mod.hub_reachable() is False
    assert len(calls) == 1
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(load_mod, "_HUB", {})
    assert load_mod.hub_reachable() is False and len(calls) == 1  # the env var needs no probe


# ----------------------------------------------------------------------------- 6. tokenizer fingerprints
def test_pair_notices_equal_size_tokenizers_with_one_tokenizer_passed(tmp_path):
    from workbench.models.load import load_model
    from workbench.pair import ModelPair

    a, ta, ia = load_model(_save_tiny(tmp_path / "a", "w"), device="cpu")
    b, tb, ib = load_model(_save_tiny(tmp_path / "b", "v", seed=1), device="cpu")
    c, _, ic = load_model(_save_tiny(tmp_path / "c", "w", seed=2), device="cpu")
    assert len(ta) == len(tb) and ia.d_vocab == ib.d_vocab
    assert ia.tokenizer_hash != ib.tokenizer_hash and ia.tokenizer_hash == ic.tokenizer_hash
    json.dumps(ia.to_dict())  # still JSON-compatible
    with pytest.raises(MismatchError, match="tokenizers differ"):
        ModelPair(a, b, ta, ia, ib)
    with pytest.raises(MismatchError, match="different vocabularies"):
        ModelPair(a, b, ta, ia, ib, tuned_tokenizer=tb)
    with pytest.raises(MismatchError, match="not the base model's"):
        ModelPair(a, c, tb, ia, ic)
    assert ModelPair(a, c, ta, ia, ic).prepend_bos is False


IDS = [[5, 6, 7, 8], [9, 10, 11, 12]]
SRC = [[13, 14, 15, 16], [17, 18, 19, 20]]
SITES = [Site(0, "attn.hook_z", head=0), Site(1, "hook_resid_pre", pos=-1)]


@pytest.fixture
def ctx():
    from probes.metrics import logit_diff
    from workbench.pair import ModelPair

    model, info = make_tiny(0)
    tuned, _ = make_tiny(1)
    return {"model": model, "tuned": tuned, "info": info, "metric": logit_diff([3, 4], [[3, 4], [4, 3]]),
            "pair": ModelPair(model, tuned, _word_tokenizer("w"), info, info)}


def _call(name):
    from probes import (
        circuits,
        contribution,
        dcm,
        layer_search,
        metrics,
        patch_sites,
        patching,
        path_patching,
    )
    from probes.diff import prompts as model_diff
    from workbench import data
    from workbench.finetune import finetune

    ap, pp = patching.activation_patch, path_patching.path_patch
    return {
        "patch: unequal target/source": lambda c: ap(c["model"], SITES, IDS, [[1, 2]], c["metric"]),
        "patch: one flat prompt": lambda c: ap(c["model"], SITES, [1, 2, 3], [4, 5, 6], c["metric"]),
        "patch: ids beyond vocab": lambda c: ap(c["model"], SITES, [[1, 64]], [[1, 2]], c["metric"]),
        "patch: float ids": lambda c: patching.attribution_patch(c["model"], SITES, torch.rand(2, 4), SRC, c["metric"]),
        "patch: metric not callable": lambda c: ap(c["model"], SITES, IDS, SRC, "logit_diff"),
        "patch: a pair, not a model": lambda c: ap(c["pair"], SITES, IDS, SRC, c["metric"]),
        "patch: sites an int": lambda c: ap(c["model"], 3, IDS, SRC, c["metric"]),
        "path_patch: receivers not Sites": lambda c: pp(c["model"], SITES[:1], ["x"], IDS, SRC, c["metric"]),
        "run_patched: n_variants 0": lambda c: patching.run_patched(c["model"], IDS, [], 0),
        "cache: text": lambda c: patching.cache(c["model"], "some text", ["blocks.0.hook_resid_pre"]),
        "mean_activations: ragged": lambda c: patching.mean_activations(c["model"], [[1, 2], [3]], ["blocks.0.hook_resid_pre"]),
        "faithfulness: one Site": lambda c: circuits.faithfulness(c["model"], Site(0, "attn.hook_z", head=0), IDS, c["metric"], {}),
        "cmap: empty ids": lambda c: circuits.cmap(c["model"], c["tuned"], {"g": SITES[:1]}, [[]], c["metric"]),
        "dcm: float targets": lambda c: dcm.dcm(c["model"], SITES[:1], IDS, SRC, [1.0, 2.0], [[1, 2], [2, 1]],
                                                dcm.DCMConfig(steps=1)),
        "compare: float ids": lambda c: model_diff.compare(c["pair"], [[1.5, 2.5]]),
        "tuco: ragged": lambda c: contribution.tuco(c["model"], c["tuned"], [[1, 2], [3]]),
        "alpha_forward: bad mask": lambda c: contribution.alpha_forward(c["model"], c["tuned"], IDS, 0.5, attention_mask=[1, 1]),
        "logit_diff: 2-D correct": lambda c: metrics.logit_diff([[1]], [[1, 2]]),
        "layer_search: not lists": lambda c: layer_search.check_pairs(3, 3, 3),
        "layer_search: float answers": lambda c: layer_search.check_pairs([[1]], [[2]], [0.5]),
        "last_token_acts: flat list": lambda c: layer_search.last_token_acts(c["model"], [1, 2, 3], "hook_resid_post", [0]),
        "right_pad: flat list": lambda c: data.right_pad([1, 2, 3], 0),
        "final_position_logits: shapes": lambda c: data.final_position_logits(c["model"], [[1, 2]], [[1]]),
        "pair.tokenize: a str": lambda c: c["pair"].tokenize("w1 w2"),
        "equal_length_ids: a str": lambda c: patch_sites.equal_length_ids(c["pair"].tokenizer, "w1 w2", False),
        "pair.logits: ids beyond vocab": lambda c: c["pair"].logits([[1, 999]]),
        "pair.bridge: bad role": lambda c: c["pair"].bridge("other"),
        "finetune: tuples": lambda c: finetune("lofit", c["model"], c["info"], [(1, 2)]),
        "finetune: no examples": lambda c: finetune("lofit", c["model"], c["info"], []),
        "finetune: info a dict": lambda c: finetune("lofit", c["model"], {"n_layers": 2}, [Example((1,), (2,))]),
        "finetune: ids beyond vocab": lambda c: finetune("lofit", c["model"], c["info"], [Example((1,), (300,))]),
    }[name]


BAD_CALLS = {
    "patch: unequal target/source": "same [batch, pos] shape",
    "patch: one flat prompt": "wrap it: [ids]",
    "patch: ids beyond vocab": "outside the vocabulary of 64",
    "patch: float ids": "integer token ids",
    "patch: metric not callable": "metric must be a function",
    "patch: a pair, not a model": "Side.of(pair",
    "patch: sites an int": "sites must be a non-empty list",
    "path_patch: receivers not Sites": "receivers must be attn.hook_q",
    "run_patched: n_variants 0": "n_variants must be an int >= 1",
    "cache: text": "tokenize text first",
    "mean_activations: ragged": "rectangular",
    "faithfulness: one Site": "must be a list of Sites",
    "cmap: empty ids": "is empty",
    "dcm: float targets": "target_ids must hold integer token ids",
    "compare: float ids": "integer token ids",
    "tuco: ragged": "rectangular",
    "alpha_forward: bad mask": "attention_mask must be [batch, pos]",
    "logit_diff: 2-D correct": "correct must have 1 axes",
    "layer_search: not lists": "must be lists of token-id lists",
    "layer_search: float answers": "answer_ids must hold integer token ids",
    "last_token_acts: flat list": "wrap it: [ids]",
    "right_pad: flat list": "wrap it: [ids]",
    "final_position_logits: shapes": "differ in shape",
    "pair.tokenize: a str": "wrap it: [prompt]",
    "equal_length_ids: a str": "wrap it: [prompt]",
    "pair.logits: ids beyond vocab": "outside the vocabulary",
    "pair.bridge: bad role": "role must be 'base' or 'tuned'",
    "finetune: tuples": "not an Example",
    "finetune: no examples": "at least one training example",
    "finetune: info a dict": "ModelInfo",
    "finetune: ids beyond vocab": "outside the vocabulary of 64",
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_bad_input_is_one_clear_config_error(ctx, name):
    try:
        _call(name)(ctx)
    except ConfigError as exc:
        assert BAD_CALLS[name] in str(exc), str(exc)
    except TRACEBACK_PRONE as exc:  # pragma: no cover - the failure this test exists for
        pytest.fail(f"{name}: {type(exc).__name__} escaped: {exc}")
    else:  # pragma: no cover
        pytest.fail(f"{name}: no error")


def test_lists_of_token_ids_are_accepted_like_tensors(ctx):
    from probes import contribution, patching, path_patching

    m, metric = ctx["model"], ctx["metric"]
    t_ids, t_src = torch.tensor(IDS), torch.tensor(SRC)
    for fn in (patching.activation_patch, patching.attribution_patch):
        assert torch.allclose(fn(m, SITES, IDS, SRC, metric), fn(m, SITES, t_ids, t_src, metric), atol=1e-6)
    senders = [Site(0, "attn.hook_z", head=h) for h in range(2)]
    assert torch.allclose(path_patching.path_patch(m, senders, "logits", IDS, SRC, metric),
                          path_patching.path_patch(m, senders, "logits", t_ids, t_src, metric), atol=1e-6)
    assert torch.equal(patching.run_patched(m, IDS, [], 1)[0], patching.run_patched(m, t_ids, [], 1)[0])
    assert torch.allclose(contribution.tuco(m, ctx["tuned"], IDS), contribution.tuco(m, ctx["tuned"], t_ids))
    base, tuned = ctx["pair"].logits(IDS)
    assert base.shape == tuned.shape == (2, 4, 64)


def test_every_error_here_is_a_workbench_error():
    assert all(issubclass(e, WorkbenchError) for e in (CheckpointError, ConfigError, MismatchError, ModelNotFoundError))
