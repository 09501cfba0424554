"""The gradient the optimizer steps with, compared directly (issue 26, item 3): after AdamW and clipping the
parameters are blind to a uniform gradient scale, so a sum-versus-mean-over-processes mistake would pass
tests/test_distributed.py. Here the first step's gradient of every ``fit()`` of every method — all-reduced over 2
gloo processes (``accelerate launch``), or accumulated over micro-batches — must equal the single-process,
single-batch gradient of the same global batch within 1e-7 absolute + 1e-6 relative (tests/dp_launch.py), and the
comparison is shown to catch a gradient multiplied or divided by the world size (negative controls: the bug is
injected into the worker by tests/dp_launch.py, never into the library).

Measured on the tiny model (2-core CPU, one step; lofit / caft / full / lora / neft): largest gradient entry
0.092 / 0.067 / 0.43 / 0.20 / 0.30; largest difference from the single-process gradient, accumulated ×3:
3.7e-9 / 3.7e-9 / 3.0e-8 / 3.0e-8 / 3.5e-10; 2 processes: 2.8e-9 / 3.7e-9 / 1.8e-8 / 3.0e-8 / 4.7e-10; 2 processes
× 2 micro-batches: 5.6e-9 / 6.5e-9 / 6.0e-8 / 3.0e-8 / 7.0e-10. The ×2 bug misses by 9.2e-2 (lofit) / 6.7e-2 (caft),
the ÷2 bug by 4.6e-2 / 3.4e-2 — while the parameters after the step still agree within 2e-5.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from dp_launch import METHODS, assert_same_gradients, close, first_step_gradients, flat_grads, launch, run, single

#: The deliberate bugs of the negative controls (tests/dp_launch.py ``_inject``) and the factor each puts on the
#: gradient with 2 processes.
BUGS = {"x_world": 2.0, "mean": 0.5}
BUGGED = ("lofit", "caft")


def _single_grads(method: str, root, accum: int = 1) -> dict[str, torch.Tensor]:
    with first_step_gradients() as grads:
        single(method, 1, root, accum=accum)
    return flat_grads(grads)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One 2-process launch: every method one step, without and with 2 micro-batches per process, and the buggy
    runs of the negative controls."""
    out = tmp_path_factory.mktemp("dp_grads")
    runs = [run(f"{m}-accum{a}", m, 1, a) for m in sorted(METHODS) for a in (1, 2)]
    runs += [run(f"{m}-{bug}", m, 1, 1, bug) for m in BUGGED for bug in BUGS]
    launch(out, runs)
    return out


@pytest.mark.parametrize("method", sorted(METHODS))
def test_accumulated_first_step_gradients_equal_one_batch(method, tmp_path):
    """3 micro-batches (each loss summed and divided by the whole batch's answer-token count) give the gradient of
    the batch's mean loss, not 3× or ⅓× it."""
    assert_same_gradients(_single_grads(method, tmp_path, accum=3), _single_grads(method, tmp_path))


@pytest.mark.parametrize("accum", [1, 2])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_process_first_step_gradients_equal_one_process(launched, method, accum):
    """The all-reduced gradient of step 1 on 2 processes (each with its half of the global batch, in ``accum``
    micro-batches) is the single-process gradient of the whole batch, on both ranks."""
    rank0 = load_file(str(launched / f"{method}-accum{accum}.grads-rank0.safetensors"))
    rank1 = load_file(str(launched / f"{method}-accum{accum}.grads-rank1.safetensors"))
    assert_same_gradients(rank0, _single_grads(method, launched))
    assert rank1.keys() == rank0.keys() and all(torch.equal(rank1[k], rank0[k]) for k in rank0), "the ranks step with different gradients"


@pytest.mark.parametrize("bug", sorted(BUGS))
@pytest.mark.parametrize("method", BUGGED)
def test_the_gradient_comparison_catches_a_world_size_scale(launched, method, bug):
    """Negative control: with the all-reduced gradient multiplied (or divided) by the world size, the comparison
    above fails, every recorded gradient is off by exactly that factor, and yet the parameters after a step still
    match — which is why the gradient, not the parameters, is compared."""
    want = _single_grads(method, launched)
    got = load_file(str(launched / f"{method}-{bug}.grads-rank0.safetensors"))
    with pytest.raises(AssertionError, match="Tensor-likes are not close"):
        assert_same_gradients(got, want)
    for k in want:
        torch.testing.assert_close(got[k], BUGS[bug] * want[k], atol=1e-7, rtol=0)
    one = single(method, 1, launched)
    close(dict(one.intervention.state_dict()), load_file(str(launched / f"{method}-{bug}.safetensors")))


def test_the_gradient_comparison_catches_a_scale_on_one_process(tmp_path):
    """The same comparison rejects the single-process gradient scaled by 2 or ½ (no launch needed)."""
    want = _single_grads("lofit", tmp_path)
    for factor in BUGS.values():
        with pytest.raises(AssertionError):
            assert_same_gradients({k: factor * v for k, v in want.items()}, want)
