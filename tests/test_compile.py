"""The compiled training step gives the eager step's numbers (CPU: the aot_eager backend, which
traces the same ops without generating code), and falls back to eager when compiling fails."""

import logging

import pytest
import torch

from dpl.methods import build_method, method_config
from dplbench.run.train_loop import _LossModule, _Step
from tests.conftest import tiny

CLASSES = ["dog", "cat", "red car", "sunflower"]


def _batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 32, 32, generator=g)
    return {"image": images, "clean": images, "label": torch.arange(4), "key": list("abcd")}


def _one_step(how):
    torch.manual_seed(0)
    model = build_method(method_config("dpl", tiny({"lora": {"layers": [2, 3]}})))
    model.set_classes(CLASSES, "a photo of a {}.")
    model.train()
    step = _Step(_LossModule(model), how)
    torch.manual_seed(1)  # the same IWTD draws in both
    terms = step(_batch(), 1, 3)
    sum(terms.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in terms.items()}, grads


@pytest.mark.slow
def test_compiled_step_equals_eager():
    eager_terms, eager_grads = _one_step(None)
    terms, grads = _one_step("aot_eager")
    assert set(terms) == set(eager_terms) >= {"ce", "mag", "rer", "kl"}
    for k in terms:
        torch.testing.assert_close(terms[k], eager_terms[k], rtol=1e-4, atol=1e-5)
    assert set(grads) == set(eager_grads)
    for n in grads:
        torch.testing.assert_close(grads[n], eager_grads[n], rtol=1e-3, atol=1e-5)


def test_a_failing_compiled_step_falls_back_to_eager(caplog):
    caplog.set_level(logging.WARNING)
    calls = []

    class Flaky(torch.nn.Module):
        def forward(self, x):
            calls.append("eager")
            return x + 1

    step = _Step(Flaky(), None)
    step.run = lambda *a: (_ for _ in ()).throw(RuntimeError("backend cannot take this op"))
    assert step(torch.zeros(1)).item() == 1 and calls == ["eager"]
    assert step.run is step.eager and "running eager" in caplog.text
