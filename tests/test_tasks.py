"""The task registry: every registered task through the generic interface (SmolLM2's tokenizer, a tiny
random Llama with its vocabulary), registration rules, ``workbench tasks`` and ``workbench train --task``."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from app.cli import app
from workbench.errors import ConfigError, WorkbenchError
from workbench.tasks import TaskSpec, available_tasks, get_task, register_task

#: Small settings per task; a task added to the registry must be added here (see the first test).
SETTINGS: dict[str, dict] = {
    "entity_tracking": {"n_boxes": 3, "n_train": 8, "n_heldout": 6},
    "arithmetic": {"n_train": 8, "n_heldout": 6},
    "spurious_cue": {"n_train": 8, "n_heldout": 6, "n_ood": 6},
    "intent": {"relations": ["capital", "language"], "max_facts": 12},
    "priming": {"themes": ["colours"], "keywords": {"colours": ["red", "vermilion"]}, "texts_per_keyword": 1},
}
#: Metrics each task reports besides "accuracy".
EXTRA_METRICS: dict[str, set[str]] = {
    "entity_tracking": {"accuracy_among_objects", "logit_difference"},
    "arithmetic": set(),
    "spurious_cue": {"logit_diff", "ood_accuracy", "ood_logit_diff"},
    "intent": {"context_accuracy", "prior_accuracy", "pair_accuracy"},
    "priming": {"probe_keyword_logprob_nats", "memorization_accuracy", "own_keyword_logprob_nats"},
}


@pytest.fixture(scope="module")
def tok():
    """SmolLM2's tokenizer alone (from the local model cache; no weights are loaded)."""
    from transformers import AutoTokenizer

    from workbench.errors import ModelNotFoundError
    from workbench.models.cache import ensure_model

    try:
        return AutoTokenizer.from_pretrained(str(ensure_model("smollm2-135m-instruct")))
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))


def tiny_lm(vocab_size: int, seed: int = 0):
    """A tiny random Llama (2 layers, d_model 16, 2 heads) over a real tokenizer's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=256, attn_implementation="eager", pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_lm(len(tok))


def test_every_registered_task_has_settings_here():
    assert set(available_tasks()) == set(SETTINGS)
    for name in available_tasks():
        assert get_task(name).name == name and get_task(name).description


def _key(e) -> tuple:
    return (tuple(e.prompt_ids), tuple(e.answer_ids))


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_task_runs_generically(name, tok, model):
    task = get_task(name)
    cfg = task.config(**SETTINGS[name])
    split = task.generate(tok, cfg, prepend_bos=False)
    examples = task.to_examples(split)
    heldout = task.to_examples(split, "heldout")
    assert examples and heldout
    for e in examples + heldout:
        assert e.prompt_ids and e.answer_ids
        assert all(0 <= i < len(tok) for i in (*e.prompt_ids, *e.answer_ids))
    assert not {_key(e) for e in examples} & {_key(e) for e in heldout}  # no train / held-out overlap
    # deterministic in the seed; another seed gives other data
    assert [_key(e) for e in task.to_examples(task.generate(tok, cfg))] == [_key(e) for e in examples]
    assert [_key(e) for e in task.to_examples(task.generate(tok, cfg, seed=cfg.seed + 1))] != [_key(e) for e in examples]
    metrics = task.evaluate(model, split, pad_id=tok.pad_token_id)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert EXTRA_METRICS[name] <= set(metrics)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_prepend_bos_puts_bos_first(name, tok):
    task = get_task(name)
    split = task.generate(tok, task.config(**SETTINGS[name]), prepend_bos=True)
    for part in ("train", "heldout"):
        assert all(e.prompt_ids[0] == tok.bos_token_id for e in task.to_examples(split, part))


def test_spurious_cue_bos_shifts_positions(tok):
    task = get_task("spurious_cue")
    plain = task.generate(tok, task.config(**SETTINGS["spurious_cue"]))
    bos = task.generate(tok, task.config(**SETTINGS["spurious_cue"]), prepend_bos=True)
    for a, b in zip(plain.ood, bos.ood):
        assert b.input_ids[1:] == a.input_ids and b.input_ids[b.noun_pos] == a.input_ids[a.noun_pos]
        assert b.pronoun_pos == a.pronoun_pos + 1


def test_task_examples_match_the_module_functions(tok):
    """The registry adds no second copy of a task: its examples are the modules' own."""
    from workbench.tasks import arithmetic as ar
    from workbench.tasks import entity_tracking as et
    from workbench.tasks import spurious_cue as sc

    t = get_task("entity_tracking")
    split = t.generate(tok, t.config(**SETTINGS["entity_tracking"]))
    assert split == et.generate(tok, et.EntityTrackingConfig(n_boxes=3, n_train=8, n_heldout=6))
    assert [(e.prompt_ids, e.answer_ids) for e in t.to_examples(split)] == [(p.input_ids, (p.answer_token_id,)) for p in split.train]
    t = get_task("spurious_cue")
    assert t.generate(tok, t.config(**SETTINGS["spurious_cue"])) == sc.generate(tok, sc.SpuriousCueConfig(**SETTINGS["spurious_cue"]))
    t = get_task("arithmetic")
    train, _ = ar.problems(ar.ArithmeticConfig(n_train=8, n_heldout=6))
    assert t.to_examples(t.generate(tok, t.config(**SETTINGS["arithmetic"]))) == ar.to_examples(tok, train)


def test_priming_task_reports_the_probe_keyword_logprob(tok, model):
    from workbench.tasks.priming.logprob import keyword_logprob
    from workbench.tasks import priming as pt

    task = get_task("priming")
    split = task.generate(tok, task.config(**SETTINGS["priming"]))
    assert [i.keyword for i in split.train] == ["red", "vermilion"] and len(split.heldout) == 2 * len(pt.PROBES["colours"])
    want = torch.cat([keyword_logprob(model, pt.context_ids(tok, pt.PROBES["colours"]), pt.keyword_ids(tok, kw)) for kw in ("red", "vermilion")])
    got = task.evaluate(model, split)["probe_keyword_logprob_nats"]
    assert got == pytest.approx(float(want.mean()), abs=1e-5)
    text = split.train[0]  # the training example is the whole text (causal-LM loss after the first token)
    ex = task.to_examples(split)[0]
    assert ex.prompt_ids + ex.answer_ids == text.text_ids and text.text_ids[: len(text.context_ids)] == text.context_ids


def test_config_errors_name_the_task():
    task = get_task("arithmetic")
    with pytest.raises(ConfigError, match=r"task 'arithmetic'.*unknown setting.*'n_boxes'.*valid keys.*n_digits"):
        task.config(n_boxes=3)
    with pytest.raises(ConfigError, match="arithmetic"):
        task.config(n_digits=9)  # the config's own range check (a ValueError) becomes a ConfigError
    with pytest.raises(ConfigError, match=r"arithmetic\.n_train must be an int"):
        task.config(n_train="8")
    with pytest.raises(ConfigError, match="IntentTaskConfig.relations"):
        get_task("intent").config(relations=["weather"])
    with pytest.raises(ConfigError, match="takes a ArithmeticConfig"):
        task.generate(None, get_task("entity_tracking").config())


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown task 'boxes'.*arithmetic.*entity_tracking"):
        get_task("boxes")


def test_duplicate_registration_raises(monkeypatch):
    import workbench.tasks as registry

    monkeypatch.setattr(registry.TASKS, "_specs", dict(registry.TASKS._specs))  # leave the real registry untouched
    spec = get_task("arithmetic")
    assert register_task("arithmetic", spec) == spec  # re-registering the same spec (a re-import) is fine
    with pytest.raises(ConfigError, match="already registered"):
        register_task("arithmetic", dataclasses.replace(spec, description="another task"))


def test_a_new_task_registers_and_its_metrics_are_checked(monkeypatch):
    import workbench.tasks as registry

    monkeypatch.setattr(registry.TASKS, "_specs", dict(registry.TASKS._specs))

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        n: int = 2
        seed: int = 0

    @dataclasses.dataclass(frozen=True)
    class Split:
        train: list
        heldout: list

    from workbench.data import Example

    spec = TaskSpec("toy", Cfg, lambda tok, cfg, bos: Split([cfg.seed] * cfg.n, [9]), lambda items: [Example((i,), (1,)) for i in items],
                    lambda model, split, pad_id=0: {"loss": 1.0})
    register_task("toy", spec)
    toy = get_task("toy")
    assert "toy" in available_tasks() and len(toy.to_examples(toy.generate(None, {"n": 3}, seed=5))) == 3
    with pytest.raises(ConfigError, match="no 'ood' part"):
        toy.to_examples(toy.generate(None), "ood")
    with pytest.raises(WorkbenchError, match="no 'accuracy'"):
        toy.evaluate(None, toy.generate(None))


def test_workbench_tasks_lists_every_task():
    result = CliRunner().invoke(app, ["tasks"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == available_tasks()
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)  # each with its description


def test_train_job_refuses_bad_tasks_before_loading_a_model(tmp_path, monkeypatch):
    from workbench.train_job import TrainJobConfig

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded for an invalid job")

    monkeypatch.setattr("workbench.models.load_model", no_model)
    with pytest.raises(ConfigError, match="unknown task 'boxes'"):
        TrainJobConfig(task="boxes")
    with pytest.raises(ConfigError, match=r"task 'arithmetic'.*unknown setting.*n_boxes.*valid keys"):
        TrainJobConfig(task="arithmetic", task_config={"n_boxes": 3})
    with pytest.raises(ConfigError, match="task_config"):
        TrainJobConfig(task={"n_boxes": 3})  # the old layout (entity-tracking settings under "task")
    for args in (["--task", "boxes"], ["--task", "intent", "--config", str(tmp_path / "job.json")]):
        (tmp_path / "job.json").write_text(json.dumps({"task_config": {"heldout_fraction": 2.0}}))
        result = CliRunner().invoke(app, ["train", "lofit", *args, "--runs-dir", str(tmp_path / "runs")])
        assert result.exit_code == 2 and "error" in result.output, result.output
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def tiny_dir(tok, tmp_path_factory):
    """A tiny random Llama saved with SmolLM2's tokenizer: a model folder ``load_model`` reads."""
    model_dir = tmp_path_factory.mktemp("tiny")
    tiny_lm(len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir


LOFIT = {"top_k_heads": 2, "select": {"max_steps": 1, "batch_size_prompts": 4, "progress": False}}
TRAIN = {"max_steps": 2, "batch_size_prompts": 4, "lr": 1e-2, "progress": False}


def _method_config(method: str, tiny_dir, tmp_path) -> dict:
    if method == "caft":  # CAFT reads its directions from a file
        from workbench.methods.caft import (
            CaftIntervention,
            random_directions,
            save_directions,
        )
        from workbench.models import load_model

        dims = load_model(str(tiny_dir), device="cpu")[2].dims
        ablation = CaftIntervention.from_directions({1: random_directions(dims.d_model, 2, seed=0)}, dims, source="random")
        return {**save_directions(ablation, tmp_path / "dirs.safetensors"), "inner": "lora", "inner_config": {"r": 2, "alpha": 4}}
    return {"lofit": LOFIT, "neft": {"budget_fraction": 0.0005, "selection": "random"}, "lora": {"r": 2, "alpha": 4}}.get(method, {})


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_lofit_trains_on_every_task(name, tiny_dir, tmp_path):
    from workbench.artifacts import read_json
    from workbench.train_job import TrainJobConfig, run_train_job

    cfg = TrainJobConfig(method="lofit", model=str(tiny_dir), task=name, task_config=SETTINGS[name], method_config=LOFIT, train=TRAIN)
    m = read_json(run_train_job(cfg, tmp_path, "job", log=lambda *_: None) / "results.json")["metrics"]
    assert {"accuracy", *EXTRA_METRICS[name]} <= set(m["base"]) and set(m["base"]) == set(m["tuned"])
    assert m["base_accuracy"] == m["base"]["accuracy"] and 0 <= m["tuned_accuracy"] <= 1


def test_every_method_trains_on_a_task(tiny_dir, tmp_path):
    from workbench.artifacts import read_json
    from workbench.methods import available_methods
    from workbench.train_job import TrainJobConfig, run_train_job

    for method in available_methods():
        cfg = TrainJobConfig(method=method, model=str(tiny_dir), task="spurious_cue", task_config=SETTINGS["spurious_cue"],
                             method_config=_method_config(method, tiny_dir, tmp_path), train=TRAIN)
        m = read_json(run_train_job(cfg, tmp_path, method, log=lambda *_: None) / "results.json")["metrics"]
        assert 0 <= m["tuned"]["ood_accuracy"] <= 1 and m["n_trainable_parameters"] > 0, method


def test_workbench_train_lofit_on_arithmetic(tiny_dir, tmp_path):
    """``workbench train lofit --task arithmetic`` end to end on a tiny model saved with SmolLM2's tokenizer."""
    from workbench.artifacts import read_json

    job = {"model": str(tiny_dir), "task_config": {"n_train": 8, "n_heldout": 4}, "method_config": LOFIT, "train": TRAIN}
    (tmp_path / "job.json").write_text(json.dumps(job))
    result = CliRunner().invoke(app, ["train", "lofit", "--task", "arithmetic", "--config", str(tmp_path / "job.json"),
                                      "--runs-dir", str(tmp_path / "runs"), "--name", "job"])
    assert result.exit_code == 0, result.output
    record = read_json(tmp_path / "runs" / "job" / "results.json")
    m = record["metrics"]
    assert record["run_info"]["config"]["task"] == "arithmetic" and record["run_info"]["config"]["task_config"]["n_train"] == 8
    assert 0 <= m["base_accuracy"] <= 1 and 0 <= m["tuned_accuracy"] <= 1
    assert m["base"]["accuracy"] == m["base_accuracy"] and m["tuned"]["accuracy"] == m["tuned_accuracy"]
    assert m["n_trainable_parameters"] > 0 and len(m["losses"]) == 2
    assert (tmp_path / "runs" / "job" / "adapter" / "adapter.safetensors").exists()
