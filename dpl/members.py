"""The member axis: K runs of one method trained as one model (docs/dpl.md §8).

Every trainable tensor of a method carries a leading member axis K: prompts [K,n,D], LoRA
[K,T,r,D], the MAG bridge, the logit scale, meta-nets. A run trained alone is the case K = 1,
so the solo and the fused runs take one path. Rows of a forward are member-major: K·B images,
K·C class sequences; `rows_of` and `by_member` move between the two views.

Randomness is each member's own (`Streams`): every draw site draws each member's tensor from that
member's generator, with the primitive and shape its solo run uses, and stacks them. A member's
numbers therefore do not depend on the group's size, order or company. Draws happen outside the
arithmetic they feed, so that arithmetic may be compiled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

Gen = torch.Generator | None


def member_parameter(data: torch.Tensor) -> nn.Parameter:
    """A parameter whose first axis is the member axis (what `member_slice` slices)."""
    p = nn.Parameter(data)
    p.member_axis = True
    return p


def member_slice(t: torch.Tensor, k: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """Member k's part of t: t[k] when t (or the parameter `like` it belongs to) has a member
    axis; t itself otherwise (a parameter of a one-member model that a subclass added)."""
    tagged = getattr(like if like is not None else t, "member_axis", False)
    return t[k] if tagged else t


def rows_of(x: torch.Tensor) -> torch.Tensor:
    """[K,N,...] -> [K·N,...] (member-major rows)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def by_member(x: torch.Tensor, k: int) -> torch.Tensor:
    """[K·N,...] -> [K,N,...]."""
    return x.reshape(k, x.shape[0] // k, *x.shape[1:])


def per_row(values: torch.Tensor, rows: int) -> torch.Tensor:
    """A per-member value [K] -> per row [K·rows, 1] (broadcast against [K·rows, S])."""
    return values.repeat_interleave(rows)[:, None]


def coefficient(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """Per-member values [K] on `like`'s device, in fp32 (computed on the host in double, then
    rounded once, as a Python scalar is when an op takes it)."""
    return torch.tensor(list(values), dtype=torch.float32, device=like.device)


def member_view(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[K] -> [K,1,...,1] broadcastable against x [K,...]."""
    return c.view(-1, *([1] * (x.dim() - 1)))


class Streams:
    """The members' random streams: per member its CPU generator and, for runs on a GPU, its
    generator there (None: the global stream, as a run outside the harness draws)."""

    def __init__(self, cpu: Sequence[Gen], cuda: Sequence[Gen] | None = None) -> None:
        self.cpu = list(cpu)
        self.cuda = list(cuda) if cuda is not None else [None] * len(self.cpu)

    @classmethod
    def seeded(cls, seeds: Sequence[int], device: torch.device) -> Streams:
        """Each member's streams seeded as seeding its solo run seeds torch's."""
        cpu = [torch.Generator().manual_seed(s) for s in seeds]
        cuda = None
        if device.type == "cuda":
            cuda = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        return cls(cpu, cuda)

    @classmethod
    def global_(cls, k: int = 1) -> Streams:
        return cls([None] * k)

    def __len__(self) -> int:
        return len(self.cpu)

    def subset(self, members: Sequence[int]) -> Streams:
        return Streams([self.cpu[i] for i in members], [self.cuda[i] for i in members])

    def only(self, members: Sequence[int]) -> Streams:
        """These streams for `members`; the others draw from scratch streams (a member that
        sits a step out must not move its own)."""
        scratch = Streams.seeded([0] * len(self), torch.device("cpu"))
        keep = set(members)
        cpu = [g if k in keep else scratch.cpu[k] for k, g in enumerate(self.cpu)]
        cuda = [g if k in keep else None for k, g in enumerate(self.cuda)]
        if any(g is not None for g in self.cuda):
            dev = next(g for g in self.cuda if g is not None).device
            cuda = [g if g is not None else torch.Generator(device=dev) for g in cuda]
        return Streams(cpu, cuda)

    def on(self, device: torch.device) -> list[Gen]:
        return self.cuda if device.type == "cuda" else self.cpu

    def state(self, k: int) -> dict[str, torch.Tensor | None]:
        """Member k's streams as a checkpoint keeps them (a resumed run draws on from there)."""
        cpu, cuda = self.cpu[k], self.cuda[k]
        return {
            "cpu": cpu.get_state() if cpu is not None else torch.get_rng_state(),
            "cuda": cuda.get_state() if cuda is not None else None,
        }

    def load(self, k: int, state: dict[str, torch.Tensor | None]) -> None:
        if self.cpu[k] is not None:
            self.cpu[k].set_state(state["cpu"])
        if self.cuda[k] is not None and state.get("cuda") is not None:
            self.cuda[k].set_state(state["cuda"])

    # ---- draws: each member's from its own generator, stacked --------------------------------

    def uniform(self, shape: Sequence[int], device: torch.device) -> torch.Tensor:
        """[K,*shape] ~ U[0,1) (torch.rand per member)."""
        return torch.stack([torch.rand(shape, device=device, generator=g) for g in self.on(device)])

    def normal(self, shape: Sequence[int], device: torch.device) -> torch.Tensor:
        """[K,*shape] ~ N(0,1) in fp32 (torch.randn per member)."""
        gens = self.on(device)
        return torch.stack(
            [torch.randn(shape, device=device, generator=g, dtype=torch.float32) for g in gens]
        )

    def dropout(self, x: torch.Tensor, p: float) -> torch.Tensor:
        """Inverted dropout of x [K,...] with each member's own mask, drawn as F.dropout draws
        it on the CPU (a Bernoulli(1-p) tensor like the input, divided by 1-p)."""
        if p == 0.0:
            return x
        if p >= 1.0:
            return x * 0.0
        gens = self.on(x.device)
        noise = torch.empty_like(x)
        for k, g in enumerate(gens):
            noise[k].bernoulli_(1 - p, generator=g)
        return x * noise.div_(1 - p)

    def randint(self, n: int) -> list[int]:
        """One draw in [0, n) per member (torch.randint on the CPU)."""
        return [int(torch.randint(n, (1,), generator=g)) for g in self.cpu]


def init_linear_(weight: torch.Tensor, bias: torch.Tensor | None, gen: Gen) -> None:
    """nn.Linear's own initialisation of one member's slice (weight [out,in], bias [out]), drawn
    from `gen`: kaiming_uniform(a=√5), then U(±1/√in) for the bias."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=gen)
    if bias is not None:
        bound = 1 / math.sqrt(weight.shape[1]) if weight.shape[1] > 0 else 0
        nn.init.uniform_(bias, -bound, bound, generator=gen)


class StackedLinear(nn.Module):
    """K linear maps, one per member: weight [K,out,in], bias [K,out] (each member's slice is an
    nn.Linear's, named as one). x [K,N,in] -> [K,N,out] in one batched multiply."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, gens: Sequence[Gen] = (None,)
    ) -> None:
        super().__init__()
        k = len(gens)
        self.weight = member_parameter(torch.empty(k, out_features, in_features))
        self.bias = member_parameter(torch.empty(k, out_features)) if bias else None
        with torch.no_grad():
            for i, g in enumerate(gens):
                init_linear_(self.weight[i], None if self.bias is None else self.bias[i], g)

    @classmethod
    def stack(cls, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor] | None = None):
        """The members' maps from given weights [out,in] (and biases [out]): no draws."""
        out = cls.__new__(cls)
        nn.Module.__init__(out)
        out.weight = member_parameter(torch.stack([w.detach() for w in weights]))
        out.bias = (
            None if biases is None else member_parameter(torch.stack([b.detach() for b in biases]))
        )
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype)
        if x.shape[0] == 1:  # one member: the plain linear map
            b = None if self.bias is None else self.bias[0].to(x.dtype)
            return torch.nn.functional.linear(x[0], w[0], b)[None]
        if self.bias is None:
            return torch.bmm(x, w.transpose(1, 2))
        return torch.baddbmm(self.bias.to(x.dtype)[:, None], x, w.transpose(1, 2))
