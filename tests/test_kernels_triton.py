"""Triton kernels (kernels/triton_*.py) and the GPU benchmark script.

On CUDA (with triton) each kernel is checked against its eager reference, values and gradients; without CUDA
those tests skip with the reason "no CUDA device" (allow-listed in tests/conftest.py ALLOWED_SKIPS); with CUDA but
without triton they skip with TRITON_MISSING, which is not allow-listed (a GPU machine lacking triton fails CI's
skip policy instead of passing as if it had no GPU). Everywhere:
the CPU falls back to torch, and ``studies/benchmarks/gpu_kernels.py`` imports nothing the offline GPU machine
lacks (transformer_lens, nnsight, streamlit) and exits 0 with a clear message without CUDA.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from workbench_kernels import triton_lens
from workbench_kernels.paths import path_taken
from workbench_kernels.logit_lens import lens_topk

ROOT = Path(__file__).resolve().parents[1]
#: the Triton kernels' equality tests run only with CUDA and triton (the GPU machine has triton 3.6); the two skip
#: conditions exclude each other, so a machine without CUDA always gives the allow-listed reason.
TRITON_MISSING = "Triton missing: CUDA is available but triton is not importable"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
needs_triton = pytest.mark.skipif(torch.cuda.is_available() and not triton_lens.available(), reason=TRITON_MISSING)


def test_only_a_missing_cuda_device_is_an_allowed_skip():
    """CI's skip policy (tests/conftest.py) lets the Triton tests skip for want of CUDA, never for want of triton."""
    from conftest import _allowed

    node = "tests/test_kernels_triton.py::test_triton_lens_equals_the_eager_lens_on_cuda"
    assert _allowed(node, "no CUDA device")
    assert not _allowed(node, TRITON_MISSING)


def test_the_gpu_benchmark_imports_only_what_the_gpu_machine_has():
    """A subprocess with transformer_lens, nnsight and streamlit blocked imports the script and every kernel; on a
    machine without CUDA it runs and exits 0 saying why nothing was measured."""
    code = textwrap.dedent("""
        import sys, importlib.abc, torch
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split('.')[0] in ('transformer_lens', 'nnsight', 'streamlit'):
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        import workbench_kernels.logit_lens, workbench_kernels.triton_lens
        import studies.benchmarks.gpu_kernels as g
        if not torch.cuda.is_available():
            assert g.main([]) is None
        print('imports-ok')
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "imports-ok" in proc.stdout
    if not torch.cuda.is_available():
        assert "no CUDA device" in proc.stdout and "nothing measured" in proc.stdout


def test_cpu_rows_fall_back_to_torch_and_without_cuda_the_triton_paths_say_so():
    if not torch.cuda.is_available():
        assert not triton_lens.available()
        with pytest.raises(RuntimeError, match="CUDA"):
            triton_lens.lens_topk_triton(torch.zeros(2, 16), torch.zeros(8, 16))
    torch.manual_seed(0)
    head, norm, rows = nn.Linear(16, 50, bias=False), nn.LayerNorm(16), torch.randn(7, 16)
    ids, probs, _ = lens_topk(norm, head, rows, k=3, use_triton=True)  # the torch path on the CPU
    assert path_taken("logit_lens") == "streaming"  # recorded, and the reason logged once
    ref = head(norm(rows)).softmax(-1).topk(3)
    assert torch.equal(ids, ref.indices)
    torch.testing.assert_close(probs, ref.values)


@pytest.mark.parametrize("cap", [None, 30.0])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("n_rows", "d_vocab"), [(1, 300), (300, 5000)])
@pytest.mark.gpu
@needs_cuda
@needs_triton
def test_triton_lens_equals_the_eager_lens_on_cuda(cap, dtype, n_rows, d_vocab):
    g = torch.Generator("cuda").manual_seed(0)
    d = 64
    head = nn.Linear(d, d_vocab, bias=False).to("cuda", dtype)
    nn.init.normal_(head.weight, std=0.5, generator=g)
    norm = nn.RMSNorm(d).to("cuda", dtype)
    rows = torch.randn(n_rows, d, device="cuda", generator=g).to(dtype)
    target = torch.randint(0, d_vocab, (n_rows,), device="cuda", generator=g)
    ids, probs, tprob = lens_topk(norm, head, rows, k=5, target=target, cap=cap, use_triton=True)
    x = norm(rows).float()
    logits = x @ head.weight.float().T
    logits = cap * torch.tanh(logits / cap) if cap else logits
    logp = logits.log_softmax(-1)
    # tie-robust, in nats: the kernel's own ids carry the reference's log-probabilities, and the top values agree.
    # bf16 products are exact in fp32 and fp32 rows run tl.dot in IEEE fp32: only the summation order differs
    tol = {"atol": 1e-4, "rtol": 0}
    torch.testing.assert_close(probs.log(), logp.gather(-1, ids), **tol)
    torch.testing.assert_close(probs.log(), logp.topk(5).values, **tol)
    torch.testing.assert_close(tprob.log(), logp.gather(-1, target[:, None])[:, 0], **tol)
    assert (ids == logp.topk(5).indices).float().mean() > 0.99
