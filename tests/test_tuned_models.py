"""Tuned models from the ecosystem (workbench.models.tuned): peft adapters (LoRA, IA3, LoHa), full fine-tuned
checkpoints, our run folders, our LoRA exported as a standard peft adapter, and the bad inputs (an adapter for
another base, an adapter type peft cannot load, pickle-only adapter weights, a folder that is none of these)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import tiny_llama_with_smollm2_tokenizer
from network_guard import network_attempts

IDS = torch.tensor([[5, 17, 300, 42, 9, 1000]])


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny random Llama over SmolLM2's tokenizer, saved with save_pretrained."""
    model, tok = tiny_llama_with_smollm2_tokenizer()
    d = tmp_path_factory.mktemp("tuned_models") / "base"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _fresh(base_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager").eval()


def _peft_adapter(base_dir, out, config, base_name=None):
    """Save a peft adapter made with peft itself (random, non-identity weights); return the PeftModel."""
    from peft import get_peft_model

    torch.manual_seed(3)
    config.base_model_name_or_path = None
    pm = get_peft_model(_fresh(base_dir), config).eval()
    pm.peft_config["default"].base_model_name_or_path = str(base_dir) if base_name is None else base_name
    pm.save_pretrained(out)
    return pm


def _check_pair(base_dir, adapter, reference, kind="peft"):
    from workbench.models.tuned import load_pair

    loaded = load_pair(str(base_dir), str(adapter), device="cpu")
    assert loaded.tuned_kind == kind and loaded.pair.base is not loaded.pair.tuned
    base, tuned = loaded.pair.logits(IDS)
    with torch.no_grad():
        want = reference(input_ids=IDS).logits
    assert torch.allclose(tuned, want, atol=1e-5), (tuned - want).abs().max()
    assert (tuned - base).abs().max() > 1e-4  # the adapter changes something
    assert not any("lora" in n or "ia3" in n or "hada" in n for n, _ in loaded.pair.tuned.named_parameters())  # merged
    return loaded


# ----------------------------------------------------------------------------- peft adapters
def test_peft_lora_adapter_folder(base_dir, tmp_path):
    from peft import LoraConfig

    pm = _peft_adapter(base_dir, tmp_path / "lora", LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    loaded = _check_pair(base_dir, tmp_path / "lora", pm)
    info = loaded.pair.tuned_info
    assert loaded.peft_type == "LORA" and loaded.warnings == []
    assert info.id == str((tmp_path / "lora").resolve()) and "+peft-lora:sha256:" in info.weight_hash
    assert "peft LORA adapter" in loaded.describe() and "warning" not in loaded.describe()
    # the hash identifies the adapter files: another adapter gives another hash
    _peft_adapter(base_dir, tmp_path / "lora2", LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    from workbench.models.tuned import load_pair

    assert load_pair(str(base_dir), str(tmp_path / "lora2"), "cpu").pair.tuned_info.weight_hash != info.weight_hash


@pytest.mark.parametrize("tuner", ["IA3", "LOHA"])
def test_other_peft_tuners(base_dir, tmp_path, tuner):
    from peft import IA3Config, LoHaConfig

    config = (IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"], init_ia3_weights=False)
              if tuner == "IA3" else LoHaConfig(r=2, target_modules=["q_proj", "o_proj"], init_weights=False))
    pm = _peft_adapter(base_dir, tmp_path / tuner, config)
    assert _check_pair(base_dir, tmp_path / tuner, pm).peft_type == tuner


def test_same_shape_other_base_name_is_a_warning(base_dir, tmp_path):
    from peft import LoraConfig

    pm = _peft_adapter(base_dir, tmp_path / "a", LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False),
                       base_name="someone/another-model")
    loaded = _check_pair(base_dir, tmp_path / "a", pm)
    assert len(loaded.warnings) == 1 and "'someone/another-model'" in loaded.warnings[0]
    assert "warning: the peft adapter was made for 'someone/another-model'" in loaded.describe()


def test_workbench_diff_says_and_records_the_load_warning(base_dir, tmp_path):
    """``workbench diff BASE ADAPTER`` with an adapter made for another base: the warning is on stderr and in results.json."""
    from peft import LoraConfig
    from typer.testing import CliRunner

    from app.cli import app

    _peft_adapter(base_dir, tmp_path / "a", LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False),
                  base_name="someone/another-model")
    data = tmp_path / "corpus.jsonl"
    data.write_text('{"text": "Paris is the capital of France."}\n{"text": "Hello there, general reader."}\n')
    cfg = tmp_path / "small.json"
    cfg.write_text(json.dumps({"patchscope_scales": [1.0], "steering_steps": 1, "steering_samples": 1,
                               "steering_max_new_tokens": 2, "steering_positions": [1], "steering_prompts": ["Hi"]}))
    result = CliRunner().invoke(app, ["diff", str(base_dir), str(tmp_path / "a"), "--data", str(data), "--runs-dir",
                                      str(tmp_path / "runs"), "--name", "d", "--config", str(cfg), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "warning: " in result.stderr and "someone/another-model" in result.stderr and "warning" not in result.stdout
    record = json.loads((tmp_path / "runs" / "d" / "results.json").read_text())
    assert len(record["metrics"]["warnings"]) == 1 and "someone/another-model" in record["metrics"]["warnings"][0]


def test_hub_id_adapter(base_dir, tmp_path, monkeypatch):
    """A hub id whose repo holds adapter_config.json is a peft adapter (the hub is faked with the saved folder)."""
    from peft import LoraConfig

    from workbench.models import tuned as mod

    pm = _peft_adapter(base_dir, tmp_path / "snap", LoraConfig(r=2, target_modules=["v_proj"], init_lora_weights=False))
    monkeypatch.setattr(mod, "_hub_files", lambda name, offline: ["adapter_config.json", "adapter_model.safetensors", "README.md"])
    monkeypatch.setattr(mod, "_hub_snapshot", lambda name, offline: tmp_path / "snap")
    loaded = mod.load_pair(str(base_dir), "someone/tiny-lora", "cpu")
    assert loaded.pair.tuned_info.id == "someone/tiny-lora" and loaded.tuned_kind == "peft"
    with torch.no_grad():
        assert torch.allclose(loaded.pair.logits(IDS)[1], pm(input_ids=IDS).logits, atol=1e-5)


# ----------------------------------------------------------------------------- our LoRA as a peft adapter
def _our_lora(model, info, r=2):
    from workbench.methods.lora import LoraIntervention, LoraMethodConfig

    inter = LoraIntervention(LoraMethodConfig(r=r, alpha=8.0, target_modules=["q_proj", "v_proj", "down_proj"]), info)
    inter.bind(model)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in inter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return inter


def test_our_lora_saves_a_standard_peft_adapter(tmp_path):
    """PeftModel.from_pretrained loads our export unchanged and computes what our intervention computes attached."""
    from conftest import make_tiny
    from peft import PeftModel

    from workbench.methods.lora import save_peft_adapter

    model, info = make_tiny(0)
    inter = _our_lora(model, info)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base_logits = model(input_ids=ids).logits
        with inter.attach(model):
            ours = model(input_ids=ids).logits
    save_peft_adapter(tmp_path / "peft", inter, model, info)
    assert sorted(p.name for p in (tmp_path / "peft").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["base_model_name_or_path"] == info.id
    peft_model = PeftModel.from_pretrained(make_tiny(0)[0], str(tmp_path / "peft")).eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=ids).logits
    assert torch.allclose(theirs, ours, atol=1e-5) and (ours - base_logits).abs().max() > 1e-3


def test_run_folder_and_its_peft_export_load_the_same_tuned_model(base_dir, tmp_path):
    """Our run folder (adapter/) loads as an intervention as before; its peft export loads as a peft adapter;
    both give the same tuned logits."""
    from workbench.methods import save_intervention
    from workbench.methods.lora import save_peft_adapter
    from workbench.models import load_model
    from workbench.models.tuned import load_pair

    model, _, info = load_model(base_dir, device="cpu")
    inter = _our_lora(model, info)
    save_intervention(tmp_path / "run" / "adapter", inter, info)
    save_peft_adapter(tmp_path / "run" / "peft_adapter", inter, model, info)
    run = load_pair(str(base_dir), str(tmp_path / "run"), "cpu")
    assert run.tuned_kind == "intervention" and run.method == "lora" and run.run_dir == tmp_path / "run"
    assert run.pair.base is run.pair.tuned
    exported = load_pair(str(base_dir), str(tmp_path / "run" / "peft_adapter"), "cpu")
    assert exported.tuned_kind == "peft" and exported.warnings == []  # base_model_name_or_path is the base's id
    a, b = run.pair.logits(IDS)[1], exported.pair.logits(IDS)[1]
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_save_peft_adapter_refuses_other_interventions(tmp_path):
    from conftest import make_tiny

    from workbench.errors import ConfigError
    from workbench.methods.lofit import LofitConfig, LofitOffsets
    from workbench.methods.lora import save_peft_adapter

    model, info = make_tiny(0)
    offsets = LofitOffsets(LofitConfig(top_k_heads=1, heads=[[0, 1]]), info.to_dict())
    with pytest.raises(ConfigError, match="export_hf"):
        save_peft_adapter(tmp_path / "x", offsets, model, info)
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- full checkpoints
def test_full_checkpoint_folder(base_dir, tmp_path):
    from transformers import AutoTokenizer

    tuned = _fresh(base_dir)
    with torch.no_grad():
        tuned.model.layers[1].mlp.down_proj.weight.add_(0.05)
    tuned.save_pretrained(tmp_path / "full")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp_path / "full")
    _check_pair(base_dir, tmp_path / "full", tuned, kind="model")


def test_offline_uncached_hub_id_fails_fast(base_dir, monkeypatch):
    from workbench.errors import ModelNotFoundError
    from workbench.models.tuned import load_pair

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # "fast": nothing tries the network (no hub client retries), counted rather than timed
    with network_attempts() as attempts, pytest.raises(ModelNotFoundError, match="no-such-owner/no-such-model"):
        load_pair(str(base_dir), "no-such-owner/no-such-model", "cpu")
    assert attempts == [], f"the hub was tried offline: {attempts}"


# ----------------------------------------------------------------------------- bad inputs
def test_adapter_for_another_base_is_refused_naming_both(base_dir, tmp_path):
    from peft import LoraConfig

    from workbench.errors import MismatchError
    from workbench.models.tuned import load_pair

    other, tok = tiny_llama_with_smollm2_tokenizer()
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**other.config.to_dict(), "hidden_size": 32, "intermediate_size": 64})
    other_dir = tmp_path / "other-base"
    LlamaForCausalLM(cfg).save_pretrained(other_dir)
    tok.save_pretrained(other_dir)
    _peft_adapter(other_dir, tmp_path / "wrong", LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    with pytest.raises(MismatchError) as exc:
        load_pair(str(base_dir), str(tmp_path / "wrong"), "cpu")
    assert str(other_dir) in str(exc.value) and str(base_dir) in str(exc.value)
    # target modules the base does not have
    _peft_adapter(base_dir, tmp_path / "nomod", LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    meta = json.loads((tmp_path / "nomod" / "adapter_config.json").read_text())
    (tmp_path / "nomod" / "adapter_config.json").write_text(json.dumps({**meta, "target_modules": ["c_attn"],
                                                                        "base_model_name_or_path": "gpt2"}))
    with pytest.raises(MismatchError, match="'gpt2'"):
        load_pair(str(base_dir), str(tmp_path / "nomod"), "cpu")


def test_adapter_with_another_vocabulary_is_refused(base_dir, tmp_path):
    from peft import LoraConfig

    from app.latency.tiny import save_tiny
    from workbench.errors import MismatchError
    from workbench.models.tuned import load_pair

    _peft_adapter(base_dir, tmp_path / "a", LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False),
                  base_name="someone/other")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(save_tiny(tmp_path / "t")).save_pretrained(tmp_path / "a")  # another vocabulary
    with pytest.raises(MismatchError, match="vocabularies differ"):
        load_pair(str(base_dir), str(tmp_path / "a"), "cpu")


def test_adapter_type_peft_cannot_load(base_dir, tmp_path):
    import peft
    from peft import LoraConfig, PromptTuningConfig

    from workbench.errors import CheckpointError, ConfigError
    from workbench.models.tuned import load_pair

    _peft_adapter(base_dir, tmp_path / "x", LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    meta = json.loads((tmp_path / "x" / "adapter_config.json").read_text())
    (tmp_path / "x" / "adapter_config.json").write_text(json.dumps({**meta, "peft_type": "SUPER_TUNER_9000"}))
    with pytest.raises(CheckpointError, match="SUPER_TUNER_9000") as exc:
        load_pair(str(base_dir), str(tmp_path / "x"), "cpu")
    assert f"peft {peft.__version__}" in str(exc.value)
    _peft_adapter(base_dir, tmp_path / "pt", PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    with pytest.raises(ConfigError, match="PROMPT_TUNING.*virtual tokens"):
        load_pair(str(base_dir), str(tmp_path / "pt"), "cpu")


def test_pickle_only_adapter_and_empty_adapter(base_dir, tmp_path):
    from workbench.errors import CheckpointError
    from workbench.models.tuned import load_pair

    d = tmp_path / "pickled"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(base_dir)}))
    (d / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="only as pickle"):
        load_pair(str(base_dir), str(d), "cpu")
    (d / "adapter_model.bin").unlink()
    with pytest.raises(CheckpointError, match="no adapter_model.safetensors"):
        load_pair(str(base_dir), str(d), "cpu")


def test_folder_that_is_none_of_these(base_dir, tmp_path):
    from workbench.errors import ModelNotFoundError
    from workbench.models.tuned import load_pair

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelNotFoundError, match="neither a run folder.*peft adapter"):
        load_pair(str(base_dir), str(tmp_path), "cpu")


def test_errors_reach_the_cli_without_traceback_types(base_dir, tmp_path):
    """Every bad tuned spec raises a WorkbenchError subclass (what the app and CLI print without a traceback)."""
    from workbench.errors import WorkbenchError
    from workbench.models.tuned import load_pair

    for spec in (str(tmp_path / "missing"), "not-a-model", str(tmp_path)):
        with pytest.raises(WorkbenchError):
            load_pair(str(base_dir), spec, "cpu")


# ----------------------------------------------------------------------------- the real model
@pytest.mark.real
def test_real_smollm2_lora_as_peft_adapter(tmp_path):
    """Our LoRA on SmolLM2-135M-Instruct saved as a peft adapter: PeftModel.from_pretrained loads it unchanged with
    the logits of our intervention attached, and load_pair loads the pair (no warning: the adapter names the base)."""
    from peft import PeftModel

    from workbench.methods.lora import save_peft_adapter
    from workbench.models import load_model
    from workbench.models.tuned import load_pair

    model, tok, info = load_model("smollm2-135m-instruct", device="cpu")
    inter = _our_lora(model, info, r=2)
    with torch.no_grad():
        for p in inter.parameters():
            p.mul_(0.1)
    ids = torch.tensor([tok("The Eiffel Tower is in the city of")["input_ids"]])
    with torch.no_grad(), inter.attach(model):
        ours = model(input_ids=ids).logits
    save_peft_adapter(tmp_path / "peft", inter, model, info)
    del model
    loaded = load_pair("smollm2-135m-instruct", str(tmp_path / "peft"), "cpu")
    assert loaded.tuned_kind == "peft" and loaded.warnings == []
    base, tuned = loaded.pair.logits(ids)
    assert (tuned - ours).abs().max() < 1e-4 and (tuned - base).abs().max() > 1e-3
    fresh = copy.deepcopy(loaded.pair.base)
    del loaded
    with torch.no_grad():
        theirs = PeftModel.from_pretrained(fresh, str(tmp_path / "peft")).eval()(input_ids=ids).logits
    assert (theirs - ours).abs().max() < 1e-5
