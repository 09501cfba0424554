"""Path patching without repeated work: shared unpatched runs (``runs=``) and prefix sharing give the same effects
as recomputing everything, and a call with ``runs=`` runs only its patched variants.

The equality of path patching itself with hand-written TransformerLens hooks is tested in tests/test_patching.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny

from probes import metrics
from probes.path_patching import path_patch, path_patch_runs
from workbench.architecture import Dims
from workbench.errors import ConfigError
from workbench.sites import Site

B, T = 4, 8


@pytest.fixture(scope="module")
def data():
    model, _ = make_tiny(1, hidden_size=64)
    g = torch.Generator().manual_seed(7)
    clean = torch.randint(4, 64, (B, T), generator=g)
    corrupt = torch.randint(4, 64, (B, T), generator=g)
    metric = metrics.logit_diff(torch.randint(4, 64, (B,), generator=g), torch.randint(4, 64, (B, 2), generator=g))
    pos = {"q": torch.tensor([2, 3, 5, 4])}
    return model, clean, corrupt, metric, pos


CASES = {
    "logits, last token": ([Site(layer, "attn.hook_z", head=h, pos=-1) for layer in range(2) for h in range(2)], "logits"),
    "query and value inputs, named positions": ([Site(0, "attn.hook_z", head=h, pos="q") for h in range(2)],
                                     [Site(1, "attn.hook_q", head=0, pos=-1), Site(1, "attn.hook_v", head=0, pos="q")]),
    "value input (kv head), pos -3": ([Site(0, "attn.hook_z", head=h, pos=-3) for h in range(2)],
                                      [Site(1, "attn.hook_v", head=0, pos=-3)]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_shared_runs_and_prefix_equal_full_recomputation(data, case):
    model, clean, corrupt, metric, pos = data
    senders, receivers = CASES[case]
    full = path_patch(model, senders, receivers, clean, corrupt, metric, positions=pos, share_prefix=False)
    runs = path_patch_runs(model, clean, corrupt)
    shared = path_patch(model, senders, receivers, clean, corrupt, metric, positions=pos, runs=runs)
    again = path_patch(model, senders, receivers, clean, corrupt, metric, positions=pos, runs=runs, max_batch=B)
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, full, atol=1e-5, rtol=1e-5)
    live = [i for i, s in enumerate(senders) if receivers == "logits" or s.layer < 1]
    assert full[live].abs().max() > 1e-4  # a real effect, not two zeros


def test_a_call_with_runs_runs_only_its_variants(data):
    """With ``runs=`` and a cached prefix: one forward per chunk of variants (two with receivers), no baseline, no
    clean or corrupt run."""
    model, clean, corrupt, metric, _ = data
    runs = path_patch_runs(model, clean, corrupt)
    senders = [Site(0, "attn.hook_z", head=h, pos=-1) for h in range(2)]
    path_patch(model, senders, "logits", clean, corrupt, metric, runs=runs)  # computes the prefix cache once
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        path_patch(model, senders, "logits", clean, corrupt, metric, runs=runs, max_batch=B)  # 2 chunks of 1 variant
        n_logits = len(calls)
        path_patch(model, senders, [Site(1, "attn.hook_q", head=0, pos=-1)], clean, corrupt, metric, runs=runs)
    finally:
        handle.remove()
    assert n_logits == 2 and len(calls) - n_logits == 2


def test_runs_of_other_prompts_are_refused(data):
    model, clean, corrupt, metric, _ = data
    runs = path_patch_runs(model, clean, corrupt)
    with pytest.raises(ConfigError, match="other prompts"):
        path_patch(model, [Site(0, "attn.hook_z", head=0, pos=-1)], "logits", corrupt, clean, metric, runs=runs)
    other, _ = make_tiny(2)
    with pytest.raises(ConfigError, match="another model side"):
        path_patch(other, [Site(0, "attn.hook_z", head=0, pos=-1)], "logits", clean, corrupt, metric, runs=runs)
    assert Dims.of(model).n_layers == 2
