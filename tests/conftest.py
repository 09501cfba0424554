"""Shared fixtures: a tiny random Llama model (2 layers, d_model 16, 2 heads) for unit tests."""

from __future__ import annotations

import os
import re
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


pytest_plugins = ["pytester"]  # tests/test_commands.py runs the skip policy on tiny generated suites

# --- skip policy ---------------------------------------------------------------------------------------------------
# Every skip states its reason. With WORKBENCH_CI=1 (set by .ci/run) a skip fails the run unless it is on
# ALLOWED_SKIPS: a missing model package, nbclient, browser or any other part of `make install` must fail CI,
# not hide as a skip. xfails are not skips and are left alone.
#: test node id (without parameters) -> regex its skip reason must match (both must hold).
ALLOWED_SKIPS = {
    # the opt-in `.[qwen]` extra (not installed by `make install`)
    "tests/test_models.py::test_real_qwen_coder": r"Qwen2\.5-Coder GGUF packages not installed",
    # the `gpu` tests (tests/test_gpu.py) on a machine without CUDA; they run, and must pass, where CUDA exists
    **{f"tests/test_gpu.py::{name}": r"^no CUDA device$" for name in (
        "test_every_method_is_covered", "test_method_trains_in_bf16_on_cuda", "test_zero_init_is_identity_in_bf16_on_cuda",
        "test_sdpa_and_eager_agree_on_cuda", "test_patching_hooks_equal_nnsight_on_cuda", "test_app_analysis_on_cuda")},
}
CI_ENV = "WORKBENCH_CI"


def _strict() -> bool:
    return os.environ.get(CI_ENV) == "1"


def _skip_reason(rep) -> str:
    longrepr = rep.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr or "")
    return text.removeprefix("Skipped:").strip()


def _allowed(nodeid: str, reason: str) -> bool:
    test = nodeid.split("[", 1)[0]  # every parameter set of a listed test
    return any(test == key and re.search(pattern, reason) for key, pattern in ALLOWED_SKIPS.items())


def _police_skip(rep) -> None:
    """Turn a skip without a reason, or (under WORKBENCH_CI=1) one not on ALLOWED_SKIPS, into a failure."""
    if not rep.skipped or hasattr(rep, "wasxfail"):
        return
    reason = _skip_reason(rep)
    if not reason or reason in {"Skipped", "unconditional skip"}:
        problem = "a skip must state its reason"
    elif _strict() and not _allowed(rep.nodeid, reason):
        problem = f"{CI_ENV}=1: skips fail unless listed in tests/conftest.py ALLOWED_SKIPS"
    else:
        return
    rep.outcome = "failed"
    rep.longrepr = f"{problem}; skipped: {reason or '(no reason)'}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _police_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _police_skip(outcome.get_result())  # a module-level skip / importorskip


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


def tiny_llama_with_smollm2_tokenizer():
    """``(model, tokenizer)``: a tiny random Llama (2 layers, d_model 16, seed 0) over SmolLM2's real tokenizer
    from the model cache, for tests that save a model folder any command can read. Skips, with the reason,
    when the model package is missing (a failure under WORKBENCH_CI=1)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from workbench.errors import ModelNotFoundError
    from workbench.models.cache import ensure_model

    try:
        tok = AutoTokenizer.from_pretrained(str(ensure_model("smollm2-135m-instruct")))
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=256, attn_implementation="eager", pad_token_id=0)
    return LlamaForCausalLM(cfg).eval(), tok


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: invalid input is refused before any model loads."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for invalid input")

    for target in ("workbench.models.load_model", "workbench.models.load.load_model"):
        monkeypatch.setattr(target, refuse)


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


def execute_notebook(path, out_env: str, out_dir, monkeypatch, timeout: int = 300):
    """Run a study notebook top to bottom, in memory, with ``out_env`` pointing at ``out_dir`` and the kernel's
    working directory beside it (nothing is written into the repository); fail on any error output. Returns the
    executed notebook (the file is not touched)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from pathlib import Path

    monkeypatch.setenv(out_env, str(out_dir))
    cwd = Path(out_dir).parent / "notebook-cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    return nb
