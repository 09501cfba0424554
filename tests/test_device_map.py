"""Models larger than one device (issue 14), tested on the CPU: a tiny model split by accelerate with its second
layer and the unembedding offloaded to disk (the weights sit on ``meta`` in the module and are loaded from the
offload folder at each forward) gives the unsplit model's logits, hooks, interventions, training step and patching
results; ``ModelInfo.device_map`` records the split."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama_with_smollm2_tokenizer

from workbench.errors import ConfigError
from workbench.hooked import hook_count, hooks, record
from workbench.models import load_model
from workbench.sites import Site

SPLIT = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
         "model.norm": "cpu", "lm_head": "disk"}
IDS = torch.tensor([[5, 9, 3, 7, 11, 2, 40, 41], [4, 4, 8, 1, 60, 33, 2, 2]])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(unsplit, split, info, split info) loaded from the same folder."""
    root = tmp_path_factory.mktemp("split")
    model, tok = tiny_llama_with_smollm2_tokenizer()
    model.save_pretrained(root / "m")
    tok.save_pretrained(root / "m")
    whole, _, info = load_model(root / "m", device="cpu")
    split, _, split_info = load_model(root / "m", device_map=SPLIT, offload_folder=root / "offload")
    return whole, split, info, split_info


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_split_model_is_offloaded_and_recorded(models):
    whole, split, info, split_info = models
    assert any(p.device.type == "meta" for p in split.model.layers[1].parameters())  # really offloaded
    assert split_info.device_map == {k: str(v) for k, v in SPLIT.items()}
    assert json.loads(json.dumps(split_info.to_dict()))["device_map"] == split_info.device_map
    assert info.device_map is None and "device_map" not in info.to_dict()  # unsplit results unchanged
    assert split_info.weight_hash == info.weight_hash  # hashed module by module from the offload folder
    assert split_info.dims == info.dims


def test_split_logits_equal_unsplit(models):
    whole, split, _, _ = models
    torch.testing.assert_close(_logits(split), _logits(whole), atol=1e-6, rtol=0)


def test_hooks_read_and_write_on_offloaded_layers(models):
    whole, split, info, _ = models
    sites = [Site(l, h) for l in range(info.n_layers) for h in ("attn.hook_z", "hook_resid_post", "mlp.hook_post")]
    got = {}
    for name, m in (("whole", whole), ("split", split)):
        with torch.no_grad(), record(m, sites) as rec:
            m(input_ids=IDS)
        got[name] = {s: rec[s] for s in sites}
    for s in sites:
        torch.testing.assert_close(got["split"][s], got["whole"][s], atol=1e-6, rtol=0, msg=str(s))
    edit = {Site(1, "attn.hook_z"): lambda z: z * 0.5, Site(1, "hook_resid_post"): lambda x: x + 1.0}
    with hooks(whole, edit, n_heads=info.n_heads):
        ref = _logits(whole)
    with hooks(split, edit, n_heads=info.n_heads):
        out = _logits(split)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert hook_count(split) == hook_count(whole)  # ours are gone; accelerate's own live in forward wrappers


@pytest.mark.parametrize("name", ["lofit", "neft"])
def test_interventions_on_a_split_model(models, name, tiny_examples):
    from workbench.methods import get_method

    whole, split, info, _ = models
    spec = get_method(name)
    kwargs = {"lofit": dict(top_k_heads=2, heads=[[0, 1], [1, 0]], init_std=0.1),
              "neft": dict(neurons=[[0, 3], [1, 17]], init_std=0.1)}[name]
    inter = spec.intervention_cls(spec.config_cls(**kwargs), info.to_dict(), generator=torch.Generator().manual_seed(0))
    with inter.attach(whole):
        ref = _logits(whole)
    with inter.attach(split):
        out = _logits(split)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # one training step through the offloaded layer: the same loss and the same gradients as unsplit
    from workbench.train import TrainConfig, fit

    cfg = TrainConfig(max_steps=2, lr=1e-2, batch_size_prompts=8, progress=False)
    a = spec.intervention_cls(spec.config_cls(**kwargs), info.to_dict(), generator=torch.Generator().manual_seed(0))
    b = spec.intervention_cls(spec.config_cls(**kwargs), info.to_dict(), generator=torch.Generator().manual_seed(0))
    ra, rb = fit(whole, a, tiny_examples, cfg), fit(split, b, tiny_examples, cfg)
    assert ra.losses == pytest.approx(rb.losses, abs=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, atol=1e-5, rtol=0)


def test_activation_and_attribution_patching_on_a_split_model(models):
    from probes import metrics as pm
    from probes.patch_sites import head_sites
    from probes.patching import activation_patch, attribution_patch
    from workbench.architecture import Dims

    whole, split, _, _ = models
    target, source = IDS, IDS.flip(-1)
    metric = pm.logit_diff(torch.tensor([7, 7]), torch.tensor([[9, 11], [9, 11]]))
    heads = head_sites(Dims.of(whole), pos=-1)
    for fn in (activation_patch, attribution_patch):
        ref = fn(whole, heads, target, source, metric)
        out = fn(split, heads, target, source, metric)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0, msg=fn.__name__)


def test_device_map_options_need_device_map(tmp_path):
    with pytest.raises(ConfigError, match="device_map"):
        load_model(tmp_path, offload_folder=tmp_path)


def test_device_map_auto_with_max_memory_offloads_to_disk(models, tmp_path):
    """``device_map="auto"`` with a CPU budget below the model's size: accelerate puts it on disk; same logits."""
    whole, _, info, _ = models
    folder = tmp_path / "m"
    whole.save_pretrained(folder)
    tiny_llama_with_smollm2_tokenizer()[1].save_pretrained(folder)
    auto, _, auto_info = load_model(folder, device_map="auto", max_memory={"cpu": "1MB"}, offload_folder=tmp_path / "off")
    assert "disk" in auto_info.device_map.values() and auto_info.weight_hash == info.weight_hash
    torch.testing.assert_close(_logits(auto), _logits(whole), atol=1e-6, rtol=0)
