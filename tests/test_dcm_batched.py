"""DCM trained for many tasks in one batched, prefix-shared run equals the one-task-at-a-time loop it replaced.

The reference below is the training loop :func:`probes.dcm.dcm` ran before the batching (one Adam per task,
whole prompts each step, through :func:`probes.dcm._mixed`); the batched run must give the same masks, losses,
selections and accuracies up to floating-point reduction order.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny

from probes.dcm import DCMConfig, DCMTask, _mixed, dcm, dcm_many
from probes.patch_sites import Side
from probes.patching import cache
from studies.benchmarks.circuits_and_dcm import _old_dcm
from workbench.architecture import Dims
from workbench.errors import ConfigError
from workbench.sites import Site

N, T = 8, 7


def _reference(model, task, cfg):
    """The old one-task loop (kept verbatim for the speed benchmark), then the evaluation of its rounded mask."""
    side, dims, heads = Side(model), Dims.of(model), list(task.heads)
    mask, losses = _old_dcm(side, task, cfg)
    rounded = (torch.tensor(mask) >= cfg.threshold).float()
    n = task.orig_ids.shape[0]
    ev = torch.arange(n - round(n * 0.5), n)
    names = sorted({h.hook_name for h in heads})
    zo, zc = cache(side, task.orig_ids[ev], names), cache(side, task.cf_ids[ev], names)
    pos = None if task.positions is None else {k: v[ev] for k, v in task.positions.items()}
    with torch.no_grad():
        logits = _mixed(side, heads, dims, task.orig_ids[ev], zo, zc, rounded, pos)
    cands, target = task.candidates[ev], task.target_ids[ev]
    picked = cands.gather(-1, logits.gather(-1, cands).argmax(-1, keepdim=True)).squeeze(-1)
    return torch.tensor(mask), losses, rounded, float((picked == target).float().mean())


@pytest.fixture(scope="module")
def data():
    model, _ = make_tiny(0)
    g = torch.Generator().manual_seed(5)
    orig = torch.randint(4, 64, (N, T), generator=g)
    cfs = [torch.randint(4, 64, (N, T), generator=g) for _ in range(2)]
    with torch.no_grad():
        targets = [model(c).logits[:, -1].argmax(-1) for c in cfs]  # the counterfactual's own answer
    cands = [torch.stack([t, (t + 1) % 64], 1) for t in targets]
    pos = {"q": torch.randint(2, T - 2, (N,), generator=g)}
    groups = [[Site(1, "attn.hook_z", head=h, pos=-1) for h in range(2)] + [Site(0, "attn.hook_z", head=0, pos=-1)],
              [Site(0, "attn.hook_z", head=h, pos=-3) for h in range(2)],
              [Site(layer, "attn.hook_z", head=1, pos="q") for layer in range(2)]]
    tasks = [DCMTask(heads, orig, cf, t, c, pos) for heads in groups for cf, t, c in zip(cfs, targets, cands)]
    return model, tasks


def test_batched_dcm_equals_the_one_task_loop(data):
    """Six tasks (three head groups at three different first positions × two desiderata) in one run."""
    model, tasks = data
    cfg = DCMConfig(steps=12, batch_size=3, lr=0.2, lam=0.0)
    got = dcm_many(model, tasks, cfg)
    moved = 0.0
    for task, res in zip(tasks, got):
        mask, losses, rounded, acc = _reference(model, task, cfg)
        torch.testing.assert_close(torch.tensor(res.mask), mask, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(res.losses), torch.tensor(losses), atol=1e-5, rtol=1e-5)
        assert res.selected == [h for h, v in zip(task.heads, rounded.tolist()) if v == 0]
        assert res.accuracy == acc
        moved = max(moved, float((1 - mask).abs().max()))
    assert moved > 0.1  # the masks did learn: the comparison is not between two untouched masks


def test_prefix_sharing_and_whole_prompts_agree(data):
    model, tasks = data
    cfg = DCMConfig(steps=5, batch_size=4)
    a = dcm_many(model, tasks[:3], cfg)
    b = dcm_many(model, tasks[:3], cfg, share_prefix=False)
    for x, y in zip(a, b):
        torch.testing.assert_close(torch.tensor(x.mask), torch.tensor(y.mask), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(x.losses), torch.tensor(y.losses), atol=1e-5, rtol=1e-5)
    single = dcm(model, tasks[0].heads, tasks[0].orig_ids, tasks[0].cf_ids, tasks[0].target_ids, tasks[0].candidates, cfg,
                 positions=tasks[0].positions)
    assert single.mask == pytest.approx(a[0].mask, abs=1e-5)


def test_dcm_many_refuses_unequal_pair_counts(data):
    model, tasks = data
    t = tasks[0]
    short = DCMTask(t.heads, t.orig_ids[:4], t.cf_ids[:4], t.target_ids[:4], t.candidates[:4], {"q": t.positions["q"][:4]})
    with pytest.raises(ConfigError, match="same number of pairs"):
        dcm_many(model, [t, short], DCMConfig(steps=1))
    with pytest.raises(ConfigError, match="at least one task"):
        dcm_many(model, [], DCMConfig(steps=1))
