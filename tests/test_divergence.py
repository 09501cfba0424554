"""The divergence guard of fit(): blow-ups that are not NaN stop with one WorkbenchError, keep the last good
state (in memory and on disk), and a rerun with a lower learning rate resumes from it."""

from __future__ import annotations

import pytest
import torch

from workbench.checkpoints import checkpoint_steps
from workbench.divergence import (
    DEFAULT_RESTART_HINT,
    DivergenceGuard,
    restart_hint_scope,
)
from workbench.errors import (
    CheckpointError,
    ConfigError,
    DivergenceError,
    NonFiniteLossError,
    WorkbenchError,
)
from workbench.methods.lofit import LofitConfig, LofitOffsets
from workbench.train import TrainConfig, fit
from tests.conftest import tiny_llama_with_smollm2_tokenizer


def offsets(info, std=1e-2, seed=0):
    cfg = LofitConfig(top_k_heads=2, heads=[[0, 1], [1, 0]], init_std=std)
    return LofitOffsets(cfg, info.to_dict(), generator=torch.Generator().manual_seed(seed))


def _cfg(**kw):
    return TrainConfig(**{"max_steps": 8, "lr": 1e-2, "batch_size_prompts": 4, "checkpoint_every_steps": 1, "progress": False, **kw})


def _saved_params(path):
    from workbench.artifacts import load_tensors

    return {k: v for k, v in load_tensors(path / "state.safetensors").items() if k.startswith("param.")}


@pytest.mark.parametrize("bad_lr", [1e30, 1e38])
def test_huge_lr_stops_keeps_last_good_state_and_a_lower_lr_resumes(tiny, tiny_examples, tmp_path, bad_lr):
    model, info = tiny
    good_run = offsets(info)
    fit(model, good_run, tiny_examples, _cfg(max_steps=3), out_dir=tmp_path)  # three good steps
    at_3 = good_run.offsets.detach().clone()

    blown = offsets(info)
    with pytest.raises(WorkbenchError) as err:  # one WorkbenchError, never a raw RuntimeError
        fit(model, blown, tiny_examples, _cfg(lr=bad_lr), out_dir=tmp_path, restart_hint="RERUN-HINT")
    assert isinstance(err.value, DivergenceError) and not isinstance(err.value, RuntimeError)
    msg = str(err.value)
    assert "at step 3" in msg and "step-000003" in msg and "RERUN-HINT" in msg and f"{bad_lr:g}" in msg, msg
    assert torch.equal(blown.offsets, at_3)  # the diverged update was undone in memory
    steps = checkpoint_steps(tmp_path / "checkpoints")
    assert steps[-1].name == "step-000003"
    for path in steps:  # nothing diverged on disk
        assert all(v.abs().max() < 1e4 for v in _saved_params(path).values())
    assert torch.equal(_saved_params(steps[-1])["param.offsets"], at_3)

    resumed = offsets(info)
    result = fit(model, resumed, tiny_examples, _cfg(lr=1e-2), out_dir=tmp_path)
    assert result.resumed_from_step == 3 and len(result.losses) == 8
    assert torch.isfinite(resumed.offsets).all() and resumed.offsets.abs().max() < 1


def test_huge_lr_on_the_first_step_without_out_dir(tiny, tiny_examples):
    model, info = tiny
    inter = offsets(info)
    start = inter.offsets.detach().clone()
    with pytest.raises(DivergenceError, match=r"at step 0: the largest \|parameter\| is 1e\+30, above divergence_max_param_abs"):
        fit(model, inter, tiny_examples, _cfg(lr=1e30, checkpoint_every_steps=0))
    assert torch.equal(inter.offsets, start)


def test_rerun_after_divergence_with_another_seed_is_refused_naming_the_cli_option(tiny, tiny_examples, tmp_path):
    model, info = tiny
    with pytest.raises(DivergenceError):
        fit(model, offsets(info), tiny_examples, _cfg(lr=1e30), out_dir=tmp_path)
    with pytest.raises(CheckpointError, match="seed") as err:
        fit(model, offsets(info), tiny_examples, _cfg(seed=1), out_dir=tmp_path)
    assert "--name <new run>" in str(err.value) and "out_dir" not in str(err.value)


def test_loss_blowup_undoes_the_update_that_caused_it(tiny, tiny_examples, tmp_path):
    model, info = tiny
    ref = offsets(info)
    fit(model, ref, tiny_examples, _cfg(max_steps=3, divergence_warmup_steps=2))
    inter = offsets(info)
    w = model.lm_head.weight.detach().clone()

    def blow_up(step, loss):  # the loss of step 4 becomes huge but finite
        if step == 4:
            with torch.no_grad():
                model.lm_head.weight.mul_(1e4)

    try:
        with pytest.raises(DivergenceError, match="at step 4: loss .* above divergence_loss_factor=20") as err:
            fit(model, inter, tiny_examples, _cfg(divergence_warmup_steps=2), out_dir=tmp_path, on_step=blow_up)
    finally:
        with torch.no_grad():
            model.lm_head.weight.copy_(w)
    assert "the update of step 3 that led there was undone" in str(err.value)
    assert torch.equal(inter.offsets, ref.offsets)
    assert checkpoint_steps(tmp_path / "checkpoints")[-1].name == "step-000003"
    assert DEFAULT_RESTART_HINT in str(err.value)


def test_loss_rule_ignores_noise_on_a_small_loss_and_respects_warmup(tiny, tiny_examples):
    _, info = tiny
    inter = offsets(info)
    params = list(inter.parameters())
    guard = DivergenceGuard(_cfg(), inter, torch.optim.AdamW(params), params)
    falling = [4.0, 3.0, 2.0, 1.0, 0.5, 0.1, 0.01, 0.001, 0.001, 0.001, 0.001]
    assert guard.loss_blowup(0.5, falling) is None  # 500× the recent median, yet healthy noise
    assert guard.loss_blowup(19.0, falling) is None
    assert "divergence_loss_factor" in guard.loss_blowup(100.0, falling)
    assert guard.loss_blowup(1e6, falling[:3]) is None  # still warming up
    off = DivergenceGuard(_cfg(divergence_loss_factor=0), inter, torch.optim.AdamW(params), params)
    assert off.loss_blowup(1e6, falling) is None


def test_non_finite_parameter_is_reported_as_non_finite(tiny):
    _, info = tiny
    inter = offsets(info)
    params = list(inter.parameters())
    guard = DivergenceGuard(_cfg(), inter, torch.optim.AdamW(params), params)
    assert guard.param_problem() is None
    with torch.no_grad():
        inter.offsets[0, 0] = float("nan")
    why, non_finite = guard.param_problem()
    assert non_finite and "non-finite" in why
    assert issubclass(NonFiniteLossError, DivergenceError)


def test_default_settings_do_not_trip_the_guard(tiny, tiny_examples, tmp_path):
    """TrainConfig defaults, and the project's largest study lr (0.1), train to the end."""
    model, info = tiny
    for cfg in (TrainConfig(progress=False), TrainConfig(lr=0.1, max_steps=100, progress=False)):
        inter = offsets(info)
        result = fit(model, inter, tiny_examples, cfg)
        assert len(result.losses) == cfg.max_steps


def test_restart_hint_reaches_nested_fit_calls(tiny, tiny_examples, tmp_path):
    from workbench.finetune import finetune

    model, info = tiny
    with pytest.raises(DivergenceError, match="NESTED-HINT"), restart_hint_scope("NESTED-HINT"):
        fit(model, offsets(info), tiny_examples, _cfg(lr=1e30), out_dir=tmp_path / "fit")
    lofit = {"top_k_heads": 2, "select": {"max_steps": 2, "lr": 1e30, "progress": False}}
    with pytest.raises(DivergenceError, match="FINETUNE-HINT"):
        finetune("lofit", model, info, tiny_examples, lofit, out_dir=tmp_path / "lofit", restart_hint="FINETUNE-HINT")


@pytest.mark.parametrize("field, value", [("divergence_loss_factor", -1.0), ("divergence_loss_factor", 0.5),
                                          ("divergence_max_param_abs", float("inf")), ("divergence_warmup_steps", 0),
                                          ("divergence_min_loss_nats", -1.0)])
def test_bad_divergence_thresholds_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama saved with SmolLM2's tokenizer (skipped when that tokenizer is not cached)."""
    model, tok = tiny_llama_with_smollm2_tokenizer()
    out = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_cli_divergence_names_the_command_and_its_advice_works(model_dir, tmp_path):
    """`workbench train` with lr 1e30: one clean error naming the step, checkpoint and command (no traceback);
    following it (same --name, lower train.lr) resumes and finishes; another seed is refused naming --name."""
    import json

    from typer.testing import CliRunner

    from app.cli import app

    def job(**train):
        (tmp_path / "job.json").write_text(json.dumps({
            "model": str(model_dir), "task_config": {"n_train": 8, "n_heldout": 4},
            "method_config": {"top_k_heads": 2, "select": {"max_steps": 1, "batch_size_prompts": 4, "progress": False}},
            "train": {"max_steps": 3, "batch_size_prompts": 4, "progress": False, **train}}))
        return CliRunner().invoke(app, ["train", "lofit", "--task", "arithmetic", "--config", str(tmp_path / "job.json"),
                                        "--runs-dir", str(tmp_path / "runs"), "--name", "r"])

    for bad in (1e30, 1e38):
        result = job(lr=bad)
        out = " ".join(result.output.split())  # rich wraps long lines
        assert result.exit_code != 0 and "Traceback" not in result.output and "RuntimeError" not in out, result.output
        assert "diverged at step 0" in out and "step-000000" in out, out
        assert "workbench train lofit --task arithmetic --config <job.json>" in out and "--name r" in out, out
    ok = job(lr=1e-2)
    assert ok.exit_code == 0, ok.output
    refused = job(lr=1e-2, seed=5)
    out = " ".join(refused.output.split())
    assert refused.exit_code != 0 and "seed" in out and "--name <new run>" in out and "out_dir" not in out, out


def test_neft_selection_step_overflow_is_one_clear_error():
    """NeFT's brief full fine-tuning (its own loop, for neuron scores) refuses an overflowing lr too."""
    from tests.conftest import make_tiny
    from workbench.data import Example
    from workbench.errors import DivergenceError
    from workbench.methods.neft import brief_full_finetune

    model, _ = make_tiny(0)
    examples = [Example((1, 2, 3), (4,)), Example((5, 6, 7), (8,))]
    with pytest.raises(DivergenceError):
        brief_full_finetune(model, examples, steps=2, lr=1e38, batch_size=2, seed=0)
