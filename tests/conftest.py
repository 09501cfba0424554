"""Shared fixtures: a tiny random Llama model (2 layers, d_model 16, 2 heads) for unit tests; the real SmolLM2 (and its
tokenizer) loaded once per test process for the tests that only read it; the skip policy; threads per xdist worker."""

from __future__ import annotations

import copy
import functools
import os
import re
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spin-waiting threads on shared cores
# Threads per test process: the cores shared among pytest-xdist workers (`make test` runs `-n auto`), at most 2.
# Measured on the 2-core VM, 2 workers: 1 thread each ran a 251-test subset in 85 s, 2 threads each in 144 s
# (oversubscribed; serial with 2 threads: 126 s). Subprocesses (notebook kernels, accelerate, CLI) inherit it.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
TEST_THREADS = int(os.environ.get("WORKBENCH_TEST_THREADS", max(1, min(2, (os.cpu_count() or 1) // _WORKERS))))
os.environ["WORKBENCH_TEST_THREADS"] = str(TEST_THREADS)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(TEST_THREADS))

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
torch.set_num_threads(TEST_THREADS)


pytest_plugins = ["pytester"]  # tests/test_commands.py runs the skip policy on tiny generated suites

# --- skip policy ---------------------------------------------------------------------------------------------------
# Every skip states its reason. With WORKBENCH_CI=1 (set by .ci/run) a skip fails the run unless it is on
# ALLOWED_SKIPS: a missing model package, nbclient, browser or any other part of `make install` must fail CI,
# not hide as a skip. xfails are not skips and are left alone.
#: test node id (without parameters) -> regex its skip reason must match (both must hold).
ALLOWED_SKIPS = {
    # the opt-in `.[qwen]` extra (not installed by `make install`)
    "tests/test_models_qwen.py::test_real_qwen_coder": r"Qwen2\.5-Coder GGUF packages not installed",
    # the `gpu` tests (tests/test_gpu.py) on a machine without CUDA; they run, and must pass, where CUDA exists (the
    # module's other tests need no GPU and run everywhere; tests/test_gpu.py checks this list against its marks)
    **{f"tests/test_gpu.py::{name}": r"^no CUDA device$" for name in (
        "test_method_trains_in_bf16_on_cuda", "test_zero_init_is_identity_in_bf16_on_cuda",
        "test_sdpa_and_eager_agree_on_cuda", "test_patching_hooks_equal_nnsight_on_cuda", "test_app_analysis_on_cuda")},
    # the Triton kernels' equality tests (tests/test_kernels_triton.py) on a machine without CUDA; with CUDA and no
    # Triton they skip with another reason ("Triton missing ..."), deliberately not listed: a failure under WORKBENCH_CI=1
    **{f"tests/test_kernels_triton.py::{name}": r"^no CUDA device$" for name in (
        "test_triton_lens_equals_the_eager_lens_on_cuda",)},
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


# the tiny-model factory is the library's (the app's latency bench builds its tiny models with it too)
from workbench.models.tiny import make_tiny, tiny_info, tiny_llama  # noqa: E402,F401  (tests import them from here)


# --- the real default model, loaded once per test process ---------------------------------------------------------
REAL_MODEL = "smollm2-135m-instruct"


@functools.lru_cache(maxsize=1)
def _cached_smollm2_tokenizer():
    from transformers import AutoTokenizer

    from workbench.models.cache import ensure_model

    return AutoTokenizer.from_pretrained(str(ensure_model(REAL_MODEL)))


def smollm2_tokenizer():
    """A private copy of SmolLM2's real tokenizer from the model cache (loaded once per process: a load verifies the
    540 MB weights' sha256 first). Skips, with the reason, when the model package is missing (a failure under
    WORKBENCH_CI=1)."""
    from workbench.errors import ModelNotFoundError

    try:
        return copy.deepcopy(_cached_smollm2_tokenizer())
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))


def model_state(model) -> tuple:
    """What a test could change on a shared model by mistake: every parameter's float64 sum and grad flag, every
    buffer's sum, the module classes (a bridge or a parametrization swaps them), forward hooks, train mode and the
    attention implementation."""
    with torch.no_grad():
        params = tuple((n, float(p.sum(dtype=torch.float64)), p.requires_grad) for n, p in model.named_parameters())
        buffers = tuple((n, float(b.sum(dtype=torch.float64))) for n, b in model.named_buffers() if b.is_floating_point())
    modules = tuple((n, type(m).__name__, len(m._forward_hooks), len(m._forward_pre_hooks), m.training) for n, m in model.named_modules())
    return params, buffers, modules, getattr(model.config, "_attn_implementation", None)


@pytest.fixture(scope="session")
def smollm2():
    """``(model, tokenizer, info)`` of the real SmolLM2-135M-Instruct (fp32, CPU), loaded once per test process and
    shared by every test that asks for it: read it, never change it (deep-copy it, or load your own, to train it in
    place, bridge it or cast it). Each test using it fails if it leaves the model changed (``_shared_model_untouched``).
    """
    from workbench.models import load_model

    return load_model(REAL_MODEL, device="cpu")


@pytest.fixture(autouse=True)
def _shared_model_untouched(request):
    """After each test that uses the shared ``smollm2`` (directly or through a fixture): the model is as loaded."""
    if "smollm2" not in request.fixturenames:
        yield
        return
    model = request.getfixturevalue("smollm2")[0]
    before = model_state(model)
    yield
    assert model_state(model) == before, "the test changed the shared SmolLM2 (deep-copy it or load your own to change it)"


def tiny_llama_with_smollm2_tokenizer():
    """``(model, tokenizer)``: a tiny random Llama (2 layers, d_model 16, seed 0) over SmolLM2's real tokenizer
    from the model cache, for tests that save a model folder any command can read. Skips, with the reason,
    when the model package is missing (a failure under WORKBENCH_CI=1)."""
    tok = smollm2_tokenizer()
    return tiny_llama(len(tok), max_position_embeddings=256), tok


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model, or starting training processes, fails the test: invalid input is refused before any model
    loads. Patched where it is used: every module-level binding of our loader (``from workbench.models.load import
    load_model`` in ``workbench.models.tuned`` and the like), transformers' ``from_pretrained`` beneath every path,
    and the launcher of ``workbench train --processes N`` (whose processes no patch here reaches)."""
    import sys

    import transformers

    import app.launch_train
    import workbench.models.load

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for invalid input")

    def refuse_launch(*args, **kwargs):
        raise AssertionError("training processes were started for invalid input")

    real = workbench.models.load.load_model
    for name, module in list(sys.modules.items()):
        ours = module is not None and name.split(".")[0] in ("workbench", "probes", "studies", "app")
        if ours and vars(module).get("load_model") is real:
            monkeypatch.setattr(module, "load_model", refuse)
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
        monkeypatch.setattr(auto, "from_pretrained", refuse)
    monkeypatch.setattr(app.launch_train, "launch_command", refuse_launch)


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


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """The app's tiny saved models (tests/test_app.py, tests/test_app_page.py): ``(base_dir, tuned_dir, run_dir,
    other_dir, runs_root)``: a tiny base, a perturbed copy, a LoFiT run folder on the base (with a results.json and
    its figure files), and a model with another d_model (mismatch)."""
    from app.latency.tiny import save_tiny, save_tiny_run, write_quickstart_like_results

    root = tmp_path_factory.mktemp("app_models")
    base = save_tiny(root / "base")
    tuned = save_tiny(root / "tuned", seed=1, perturb_from=base)
    run = write_quickstart_like_results(save_tiny_run(root / "runs" / "tiny-run", base))
    other = save_tiny(root / "other", hidden_size=32)
    return base, tuned, run, other, root / "runs"


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A loaded base/tuned pair (:func:`workbench.models.tuned.load_pair`) of the app's tiny saved base and a perturbed
    copy of it, on the CPU."""
    from app.latency.tiny import save_tiny
    from workbench.models.tuned import load_pair

    root = tmp_path_factory.mktemp("tiny_pair")
    base = save_tiny(root / "base")
    tuned = save_tiny(root / "tuned", seed=1, perturb_from=base)
    return load_pair(str(base), str(tuned), "cpu").pair


def raw_ids(tok, text: str) -> list[int]:
    """``text``'s token ids without any special token the tokenizer would add."""
    return tok(text, add_special_tokens=False)["input_ids"]


def bos_adding(tok):
    """A copy of ``tok`` whose ``add_special_tokens=True`` puts its BOS first (as Llama's and Gemma's tokenizers do)."""
    import copy

    from tokenizers import processors

    out = copy.deepcopy(tok)
    out._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    assert out("hi")["input_ids"] == [tok.bos_token_id] + raw_ids(tok, "hi")
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
