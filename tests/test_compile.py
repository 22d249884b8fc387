"""The compiled training step gives the eager step's numbers (CPU: the aot_eager backend, which
traces the same ops without generating code), and falls back to eager when compiling fails."""

import logging

import pytest
import torch

from dpl.members import Streams
from dpl.methods import build_method, method_config
from dplbench.run.train_loop import _LossModule, _Step
from tests.conftest import tiny

CLASSES = ["dog", "cat", "red car", "sunflower"]


def _batch(members: list[int]) -> dict:
    parts = []
    for k in members:
        g = torch.Generator().manual_seed(k)
        parts.append(torch.randn(4, 3, 32, 32, generator=g))
    images = torch.cat(parts)
    keys = [f"{k}-{i}" for k in members for i in range(4)]
    return {"image": images, "clean": images, "label": torch.arange(4).repeat(len(members)),
            "key": keys}  # fmt: skip


def _one_step(how, members=(1,)):
    """One step of `members` (seeds) as one model: each member's terms and gradients."""
    members = list(members)
    cfg = method_config("dpl", tiny({"lora": {"layers": [2, 3]}}))
    gens = [torch.Generator().manual_seed(k) for k in members]
    model = build_method([cfg] * len(members) if len(members) > 1 else cfg, None, gens)
    model.set_classes(CLASSES, "a photo of a {}.")
    model.train()
    module = _LossModule(model)
    step = _Step(module, how)
    streams = Streams.seeded([k * 1000 for k in members], torch.device("cpu"))
    values = step(_batch(members), 1, 3, streams)
    values.sum().backward()
    terms = [module.last.member(i) for i in range(len(members))]
    grads = [{n: p.grad[i].clone() for n, p in model.named_parameters() if p.grad is not None}
             for i in range(len(members))]  # fmt: skip
    return [{k: v.detach() for k, v in t.items()} for t in terms], grads


def _close(a_terms, a_grads, b_terms, b_grads):
    assert set(a_terms) == set(b_terms) >= {"ce", "mag", "rer", "kl"}
    for k in a_terms:
        torch.testing.assert_close(a_terms[k], b_terms[k], rtol=1e-4, atol=1e-5)
    assert set(a_grads) == set(b_grads)
    for n in a_grads:
        torch.testing.assert_close(a_grads[n], b_grads[n], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_compiled_step_equals_eager():
    (eager_terms,), (eager_grads,) = _one_step(None)
    (terms,), (grads,) = _one_step("aot_eager")
    _close(terms, grads, eager_terms, eager_grads)


@pytest.mark.slow
def test_a_compiled_fused_step_equals_each_member_compiled_alone():
    terms, grads = _one_step("aot_eager", (1, 2, 3))
    for i, k in enumerate((1, 2, 3)):
        (alone_terms,), (alone_grads,) = _one_step("aot_eager", (k,))
        _close(terms[i], grads[i], alone_terms, alone_grads)


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
