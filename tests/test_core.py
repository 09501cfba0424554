"""Unit tests of the spine on a tiny random Llama: Sites, hooks, LoFiT, fit(), artifacts (ModelPair:
``tests/test_model_pair.py``)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_tiny
from workbench.artifacts import atomic_write_json
from workbench.config import config_from_dict
from workbench.errors import CheckpointError, ConfigError, MismatchError, NonFiniteLossError
from workbench.hooked import add_hook, hook_count
from workbench.methods import load_intervention, save_intervention
from workbench.methods.lofit import LofitConfig, LofitOffsets, LofitScaling, train_lofit
from workbench.sites import Site
from workbench.train import TrainConfig, fit

IDS = torch.tensor([[5, 9, 3, 7, 11, 2], [4, 4, 8, 1, 60, 33]])


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def offsets(info, std=1e-1, heads=((0, 1), (1, 0)), seed=0):
    cfg = LofitConfig(top_k_heads=len(heads), heads=[list(h) for h in heads], init_std=std)
    return LofitOffsets(cfg, info.to_dict(), generator=torch.Generator().manual_seed(seed))


# --- Sites --------------------------------------------------------------------------------------
def test_site_names_follow_transformerlens():
    assert Site(3, "attn.hook_z", head=5).hook_name == "blocks.3.attn.hook_z"
    assert Site(0, "hook_resid_post").hook_name == "blocks.0.hook_resid_post"
    assert Site(2, "mlp.hook_post", neuron=7).hook_name == "blocks.2.mlp.hook_post"
    assert str(Site(1, "attn.hook_z", head=0, pos=-1)) == "blocks.1.attn.hook_z[head=0][pos=-1]"


@pytest.mark.parametrize("kwargs, match", [
    (dict(layer=0, hook="attn.hook_pattern"), "unknown hook"),
    (dict(layer=-1, hook="hook_resid_post"), "non-negative"),
    (dict(layer=0, hook="hook_resid_post", head=1), "head= only applies"),
    (dict(layer=0, hook="attn.hook_z", neuron=1), "neuron= only applies"),
])
def test_site_rejects_bad_input(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Site(**kwargs)


def test_site_validate_ranges():
    with pytest.raises(ConfigError, match="layer 5 does not exist"):
        Site(5, "attn.hook_z").validate(n_layers=2)
    with pytest.raises(ConfigError, match="head 3 out of range"):
        Site(1, "attn.hook_z", head=3).validate(n_layers=2, n_heads=2)


@pytest.mark.parametrize("hook", ["attn.hook_z", "mlp.hook_post", "hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                                  "attn.hook_q", "attn.hook_k", "attn.hook_v"])
def test_every_site_hook_sees_its_layout_and_can_edit(tiny, hook):
    model, info = tiny
    seen = {}

    def fn(act):
        seen["shape"] = tuple(act.shape)
        return act * 0

    with torch.no_grad():
        before = logits(model)
        handle = add_hook(model, Site(1, hook), fn)
        after = logits(model)
        handle.remove()
    expected_last = {"attn.hook_z": (info.n_heads, info.d_head), "attn.hook_q": (info.n_heads, info.d_head),
                     "attn.hook_k": (info.n_kv_heads, info.d_head), "attn.hook_v": (info.n_kv_heads, info.d_head),
                     "mlp.hook_post": (info.d_mlp,)}.get(hook, (info.d_model,))
    assert seen["shape"][2:] == expected_last and seen["shape"][:2] == tuple(IDS.shape)
    assert not torch.allclose(before, after)
    assert torch.equal(logits(model), before)


# --- attach always removes its hooks ------------------------------------------------------------
def test_attach_removes_hooks_on_exit_and_on_error(tiny):
    model, info = tiny
    inter = offsets(info)
    assert hook_count(model) == 0
    with inter.attach(model):
        assert hook_count(model) == 2
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with inter.attach(model):
            raise RuntimeError("boom")
    assert hook_count(model) == 0


def test_attach_refuses_layer_outside_model(tiny):
    model, info = tiny
    with pytest.raises(ConfigError, match="layer 7"):
        LofitOffsets(LofitConfig(top_k_heads=1, heads=[[7, 0]]), info.to_dict())


# --- LoFiT ----------------------------------------------------------------------------------------
def test_zero_initialised_lofit_is_identity(tiny):
    model, info = tiny
    ref = logits(model)
    cfg = LofitConfig(top_k_heads=2, init_std=0.0)
    for inter in (LofitScaling(cfg, info.to_dict()), offsets(info, std=0.0)):
        with inter.attach(model):
            assert torch.equal(logits(model), ref)


def test_nonzero_lofit_changes_logits_only_while_attached(tiny):
    model, info = tiny
    ref = logits(model)
    inter = offsets(info, std=0.5)
    with inter.attach(model):
        assert not torch.allclose(logits(model), ref)
    assert torch.equal(logits(model), ref)


def test_lofit_merge_into_o_proj_is_exact(tiny):
    model, info = tiny
    cfg = LofitConfig(top_k_heads=2, init_std=0.3)
    for inter in (LofitScaling(cfg, info.to_dict(), generator=torch.Generator().manual_seed(1)), offsets(info, std=0.3)):
        with inter.attach(model):
            hooked = logits(model)
        merged = copy.deepcopy(model)
        inter.merge_into(merged)
        torch.testing.assert_close(logits(merged), hooked, atol=1e-5, rtol=1e-5)


def test_few_steps_lower_the_loss(tiny, tiny_examples):
    model, info = tiny
    inter = offsets(info, std=1e-3)
    result = fit(model, inter, tiny_examples, TrainConfig(max_steps=15, lr=5e-2, batch_size_prompts=32, progress=False))
    assert result.losses[-1] < result.losses[0] - 0.05


def test_train_lofit_selects_k_heads_and_learns(tiny, tiny_examples):
    model, info = tiny
    cfg = LofitConfig(top_k_heads=0.5, select=TrainConfig(max_steps=5, progress=False),
                      offset=TrainConfig(max_steps=15, lr=5e-2, batch_size_prompts=32, progress=False))
    run = train_lofit(model, info.to_dict(), tiny_examples, cfg)
    assert len(run.heads) == 2 and run.head_scores.shape == (2, 2)
    assert run.offset_result.losses[-1] < run.offset_result.losses[0]
    rand = train_lofit(model, info.to_dict(), tiny_examples, LofitConfig(top_k_heads=2, head_selection="random", offset=cfg.offset))
    assert rand.select_result is None and len(rand.heads) == 2


@pytest.mark.parametrize("kwargs", [dict(top_k_heads=0), dict(top_k_heads=1.5), dict(head_selection="best"), dict(l1_lambda=-1.0)])
def test_lofit_config_errors(kwargs):
    with pytest.raises(ConfigError):
        LofitConfig(**kwargs)


def test_k_larger_than_model_is_refused(tiny, tiny_examples):
    model, info = tiny
    with pytest.raises(ConfigError, match="exceeds the model's 4 heads"):
        train_lofit(model, info.to_dict(), tiny_examples, LofitConfig(top_k_heads=5))


# --- configs --------------------------------------------------------------------------------------
def test_wrong_config_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown TrainConfig key\(s\) \['learning_rate'\]"):
        config_from_dict(TrainConfig, {"learning_rate": 1e-3})
    with pytest.raises(ConfigError, match="unknown LofitConfig key"):
        config_from_dict(LofitConfig, {"top_k": 3})
    with pytest.raises(ConfigError, match="max_steps must be an integer >= 1"):
        TrainConfig(max_steps=0)
    with pytest.raises(ConfigError, match="lr must be a finite number"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ConfigError, match="lr must be a number > 0"):
        TrainConfig(lr=0.0)


# --- artifacts --------------------------------------------------------------------------------------
def test_save_load_round_trip_is_exact(tiny, tmp_path):
    model, info = tiny
    inter = offsets(info, std=0.2)
    save_intervention(tmp_path / "a", inter, info)
    back = load_intervention(tmp_path / "a", info)
    assert isinstance(back, LofitOffsets) and back.config.heads == inter.config.heads
    assert torch.equal(back.offsets, inter.offsets)
    with inter.attach(model):
        ref = logits(model)
    with back.attach(model):
        assert torch.equal(logits(model), ref)
    meta = json.loads((tmp_path / "a" / "adapter.json").read_text())
    assert meta["model_weight_hash"] == info.weight_hash and meta["method"] == "lofit"


def test_load_onto_other_model_is_refused(tiny, tmp_path):
    _, info = tiny
    save_intervention(tmp_path / "a", offsets(info), info)
    _, other = make_tiny(seed=1)
    with pytest.raises(MismatchError, match="was trained on 'tiny-llama-0'"):
        load_intervention(tmp_path / "a", other)
    assert load_intervention(tmp_path / "a", other, allow_other_model=True) is not None


def test_corrupt_adapter_gives_clear_error(tiny, tmp_path):
    _, info = tiny
    save_intervention(tmp_path / "a", offsets(info), info)
    (tmp_path / "a" / "adapter.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_intervention(tmp_path / "a", info)
    (tmp_path / "a" / "adapter.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_intervention(tmp_path / "a", info)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "r.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


# --- fit: resume, seeds, NaN ------------------------------------------------------------------------
def _cfg(**kw):
    return TrainConfig(**{**dict(max_steps=8, lr=5e-2, batch_size_prompts=4, checkpoint_every_steps=1, progress=False), **kw})


def test_kill_and_resume_equals_uninterrupted(tiny, tiny_examples, tmp_path):
    model, info = tiny
    full = offsets(info, std=1e-2)
    ref = fit(model, full, tiny_examples, _cfg(), out_dir=tmp_path / "full")

    class Killed(Exception):
        pass

    def kill_at_3(step, loss):
        if step == 3:
            raise Killed

    part = offsets(info, std=1e-2)
    with pytest.raises(Killed):
        fit(model, part, tiny_examples, _cfg(), out_dir=tmp_path / "run", on_step=kill_at_3)
    assert hook_count(model) == 0
    fresh = offsets(info, std=1e-2)  # a new process would rebuild the intervention from scratch
    resumed = fit(model, fresh, tiny_examples, _cfg(), out_dir=tmp_path / "run")
    assert resumed.resumed_from_step == 3
    assert resumed.losses == ref.losses
    assert torch.equal(fresh.offsets, full.offsets)


class _Killed(Exception):
    pass


_REFERENCE: dict = {}


def _uninterrupted(model, info, examples):
    """Losses and offsets of the 8-step run that is never interrupted (cached: it does not depend on cadence)."""
    if not _REFERENCE:
        full = offsets(info, std=1e-2)
        _REFERENCE["losses"] = fit(model, full, examples, _cfg(checkpoint_every_steps=0)).losses
        _REFERENCE["offsets"] = full.offsets.detach().clone()
    return _REFERENCE["losses"], _REFERENCE["offsets"]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kills=st.lists(st.integers(1, 7), min_size=1, max_size=3, unique=True).map(sorted),
       every=st.sampled_from([1, 2, 3]), keep=st.sampled_from([1, 2]))
def test_killed_several_times_then_resumed_equals_uninterrupted(tiny, tiny_examples, kills, every, keep):
    """Property: kills at any steps, one run after the other, then a resume: bit-identical to no kill."""
    import tempfile

    model, info = tiny
    ref_losses, ref_offsets = _uninterrupted(model, info, tiny_examples)
    cfg = _cfg(checkpoint_every_steps=every, keep_checkpoints=keep)
    with tempfile.TemporaryDirectory() as tmp:
        for kill in kills:
            def killer(step, loss, kill=kill):
                if step == kill:
                    raise _Killed

            try:
                fit(model, offsets(info, std=1e-2), tiny_examples, cfg, out_dir=tmp, on_step=killer)
            except _Killed:
                pass
            assert hook_count(model) == 0
        fresh = offsets(info, std=1e-2)
        resumed = fit(model, fresh, tiny_examples, cfg, out_dir=tmp)
    assert resumed.losses == ref_losses
    assert torch.equal(fresh.offsets, ref_offsets)


_CHILD = """
import time
import torch
from conftest import make_tiny
from test_core import _cfg, offsets
from workbench.data import Example
from workbench.train import fit

g = torch.Generator().manual_seed(1)  # the tiny_examples fixture
examples = [Example(tuple(torch.randint(3, 64, (6,), generator=g).tolist()), (7,)) for _ in range(32)]
model, info = make_tiny(0)

def report(step, loss):
    print(step, flush=True)
    time.sleep(0.1)  # the parent kills while this process sleeps, computes or writes the next checkpoint

fit(model, offsets(info, std=1e-2), examples, _cfg(checkpoint_every_steps={every}), out_dir={out!r}, on_step=report)
print("done", flush=True)
"""


def test_sigkilled_subprocess_resumes_bit_identical(tiny, tiny_examples, tmp_path):
    """A real SIGKILL (no Python cleanup, possibly mid-checkpoint-write) of a process running fit(), twice in
    a row, then a resume here: the same losses and parameters as a run that was never interrupted."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    model, info = tiny
    ref_losses, ref_offsets = _uninterrupted(model, info, tiny_examples)
    tests = str(Path(__file__).resolve().parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}  # conftest, test_core
    for kill_after, every in ((2, 1), (5, 2)):
        code = _CHILD.format(every=every, out=str(tmp_path / "run"))
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            for line in proc.stdout:
                if line.strip() == "done" or int(line) >= kill_after:
                    break
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    fresh = offsets(info, std=1e-2)
    resumed = fit(model, fresh, tiny_examples, _cfg(), out_dir=tmp_path / "run")
    assert resumed.resumed_from_step is not None and resumed.resumed_from_step < 8
    assert resumed.losses == ref_losses
    assert torch.equal(fresh.offsets, ref_offsets)


def test_same_seed_same_run(tiny, tiny_examples):
    model, info = tiny
    a, b = offsets(info, seed=3), offsets(info, seed=3)
    ra = fit(model, a, tiny_examples, _cfg(checkpoint_every_steps=0))
    rb = fit(model, b, tiny_examples, _cfg(checkpoint_every_steps=0))
    assert ra.losses == rb.losses and torch.equal(a.offsets, b.offsets)


def test_resume_with_other_config_is_refused(tiny, tiny_examples, tmp_path):
    # Was: a changed lr was refused. A lower lr must now resume (the divergence guard's advice); a setting
    # that changes what is trained (the seed) is still refused, and the message names the CLI option.
    model, info = tiny
    fit(model, offsets(info), tiny_examples, _cfg(max_steps=2), out_dir=tmp_path)
    with pytest.raises(CheckpointError, match="another TrainConfig") as err:
        fit(model, offsets(info), tiny_examples, _cfg(max_steps=4, lr=1e-3, seed=1), out_dir=tmp_path)
    assert "--name <new run>" in str(err.value) and "seed" in str(err.value) and "out_dir" not in str(err.value)
    resumed = fit(model, offsets(info), tiny_examples, _cfg(max_steps=4, lr=1e-3), out_dir=tmp_path)
    assert resumed.resumed_from_step == 2 and len(resumed.losses) == 4


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny, tiny_examples, tmp_path):
    model, info = tiny
    inter = offsets(info, std=1e-2)

    def poison(step, loss):
        if step == 4:
            with torch.no_grad():
                model.lm_head.weight[0, 0] = float("nan")

    good = None
    with pytest.raises(NonFiniteLossError, match="non-finite .* at step 4; parameters were not updated; last good state saved"):
        try:
            fit(model, inter, tiny_examples, _cfg(), out_dir=tmp_path, on_step=poison)
        finally:
            good = inter.offsets.detach().clone()
            with torch.no_grad():
                model.lm_head.weight[0, 0] = 0.0
    assert torch.isfinite(good).all()
    resumed = offsets(info, std=1e-2)
    fit(model, resumed, tiny_examples, _cfg(max_steps=4), out_dir=tmp_path)
    assert torch.equal(resumed.offsets, good)


def test_fit_refuses_empty_data(tiny):
    model, info = tiny
    with pytest.raises(ConfigError, match="at least one training example"):
        fit(model, offsets(info), [], _cfg())
