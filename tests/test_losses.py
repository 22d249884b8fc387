"""RER, MAG and the λ schedule against small hand computations (docs/dpl.md §3, §4)."""

import math

import pytest
import torch

from dpl.mag import alignment_loss
from dpl.residual_entropy import entropy, rer_lambda, residual_entropies


def test_lambda_schedule():
    assert rer_lambda(0, 20) == 0.0
    assert rer_lambda(19, 20) == pytest.approx(0.1 - 0.1 * 10.5**-0.75)
    assert rer_lambda(19, 20) == pytest.approx(0.083, abs=5e-4)
    assert all(rer_lambda(e, 20) < rer_lambda(e + 1, 20) for e in range(19))
    assert rer_lambda(0, 20, fixed=True) == rer_lambda(19, 20, fixed=True) == 0.1


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def _h(p):
    return -sum(q * math.log(q + 1e-5) for q in p)


def test_residual_entropy_hand_computed():
    # Unit vectors in 2-D so normalisation is a no-op; one image, two classes.
    f_d, f_o = [0.6, 0.8], [1.0, 0.0]
    t_d = [[0.0, 1.0], [1.0, 0.0]]
    t_o = [[0.8, 0.6], [0.6, -0.8]]
    lam, s = 0.25, 2.0
    z_t = [[(a - lam * b) / (1 - lam) for a, b in zip(td, to)] for td, to in zip(t_d, t_o)]
    z_v = [(a - lam * b) / (1 - lam) for a, b in zip(f_d, f_o)]
    p_t = _softmax([s * sum(a * b for a, b in zip(f_o, z)) for z in z_t])
    p_v = _softmax([s * sum(a * b for a, b in zip(z_v, t)) for t in t_o])
    one = torch.tensor([s])  # one member: its features [1,B,E] / [1,C,E], its λ and scale

    def entropies(lams, scale):
        k = len(lams)
        return residual_entropies(
            torch.tensor([[f_d]] * k), torch.tensor([[f_o]] * k), torch.tensor([t_d] * k),
            torch.tensor(t_o), lams, scale,
        )  # fmt: skip

    h_t, h_v = entropies([lam], one)
    assert h_t.item() == pytest.approx(_h(p_t), abs=1e-6)
    assert h_v.item() == pytest.approx(_h(p_v), abs=1e-6)
    # λ = 0: the residual is the learnable feature itself.
    h_t0, _ = entropies([0.0], one)
    assert h_t0.item() == pytest.approx(_h(_softmax([0.0, 2.0])), abs=1e-6)
    # two members at once, each with its own λ and scale: each its own entropies
    h_t2, h_v2 = entropies([lam, 0.0], torch.tensor([s, s]))
    assert h_t2.tolist() == pytest.approx([h_t.item(), h_t0.item()], abs=1e-6)


def test_entropy_of_uniform_is_log_c():
    assert entropy(torch.zeros(3, 4)).item() == pytest.approx(
        -4 * 0.25 * math.log(0.25 + 1e-5), abs=1e-6
    )


def test_mag_alignment_loss_hand_computed():
    # Layer 1: orthogonal v and t -> m = (v+t)/2, <v,m> = <t,m> = 0.5 -> 0.5·(0.5+0.5) = 0.5
    # Layer 2: identical -> 0. Mean over layers = 0.25. Class 1 is the label; class 0 is a decoy.
    # The text aggregates come as the hook captures them: each sample's label class's.
    v1 = torch.tensor([[[1.0, 0.0]]])  # [B=1, M=1, d=2]
    t1 = torch.tensor([[[0.0, 3.0]]])  # its label class's aggregate, [B=1, M=1, d=2]
    v2 = torch.tensor([[[0.0, 2.0]]])
    t2 = torch.tensor([[[0.0, 1.0]]])
    loss = alignment_loss([v1, v2], [t1, t2], 1)
    assert loss.item() == pytest.approx(0.25, abs=1e-6)
    # two members (member-major rows): each its own mean
    both = alignment_loss([torch.cat([v1, v2])] * 2, [torch.cat([t1, t2])] * 2, 2)
    assert both.tolist() == pytest.approx([0.5, 0.0], abs=1e-6)
    with pytest.raises(ValueError):
        alignment_loss([v1], [], 1)
