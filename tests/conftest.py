"""Shared fixtures: a tiny random Llama model (2 layers, d_model 16, 2 heads) for unit tests."""

from __future__ import annotations

import os
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spin-waiting threads on shared cores

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests are derandomized in the suite (the same examples on every run, so CI cannot fail by chance);
# `pytest --hypothesis-profile=explore` draws new examples to look for more bugs.
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(int(os.environ.get("WORKBENCH_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))


def tiny_info(model, id_: str) -> "ModelInfo":
    """A real ModelInfo for a tiny Llama built by :func:`make_tiny`."""
    from workbench.models import ModelInfo, weights_hash

    c = model.config
    return ModelInfo(id=id_, weight_hash=weights_hash(model), n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
                     n_kv_heads=c.num_key_value_heads, d_head=c.hidden_size // c.num_attention_heads, d_model=c.hidden_size,
                     d_mlp=c.intermediate_size, d_vocab=c.vocab_size, architecture="LlamaForCausalLM", prepend_bos=False, path="")


def make_tiny(seed: int = 0, hidden_size: int = 16):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=hidden_size, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      attn_implementation="eager", pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    return model, tiny_info(model, f"tiny-llama-{seed}")


@pytest.fixture
def tiny():
    """(model, info) of a fresh tiny random Llama."""
    return make_tiny(0)


@pytest.fixture
def tiny_examples():
    """A small task an offset can learn: random prompts, the answer is always token 7."""
    from workbench.data import Example

    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(32):
        ids = torch.randint(3, 64, (6,), generator=g).tolist()
        out.append(Example(tuple(ids), (7,)))
    return out


def execute_notebook(path, out_env: str, out_dir, monkeypatch, timeout: int = 300) -> None:
    """Run a study notebook top to bottom with ``out_env`` pointing at ``out_dir``; fail on any error output."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from pathlib import Path

    monkeypatch.setenv(out_env, str(out_dir))
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(Path(__file__).resolve().parents[1])}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
