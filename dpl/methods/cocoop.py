"""CoCoOp: CoOp's context shifted per image by a meta-net on the image feature, so the text encoder
runs per image over all classes (docs/dpl.md §6). One meta-net per member (stacked linears)."""

import torch
import torch.nn.functional as F
from torch import nn

from dpl.losses import Terms, _ce
from dpl.members import StackedLinear
from dpl.methods.base import PromptedCLIP


class CoCoOp(PromptedCLIP):
    def __init__(self, cfg, clip=None, gens=None) -> None:
        super().__init__(cfg, clip, gens)
        gens = tuple(gens) if gens is not None else (None,) * self.members
        d = self.clip.visual.output_dim
        self.meta_net = nn.Sequential(
            StackedLinear(d, max(d // 16, 1), gens=gens),
            nn.ReLU(inplace=True),
            StackedLinear(max(d // 16, 1), self.text.width, gens=gens),
        )

    def _logits(self, f: torch.Tensor) -> torch.Tensor:
        """Image features f [K,B,E] (normalised, each member's) -> logits [K,B,C]: each member's
        context shifted per image, then the text tower over its B·C sequences."""
        k, b, _ = f.shape
        ctx = self.text_prompts()[0]  # [K,n,Dt]
        shifted = ctx[:, None] + self.meta_net(f)[:, :, None]  # [K,B,n,Dt]
        cs = self.classes
        c = cs.embedded.shape[0]
        t = self.text(
            cs.embedded.repeat(k * b, 1, 1), cs.eot.repeat(k * b),
            [shifted.flatten(0, 1).repeat_interleave(c, 0)],
        )  # fmt: skip
        t = F.normalize(t, dim=-1).view(k, b, c, -1)
        scale = self.logit_scale.view(-1, 1, 1)
        with torch.autocast(f.device.type, enabled=False):  # fp32 logits under autocast
            return scale * torch.einsum("kbe,kbce->kbc", f.float(), t.float())

    def member_logits(self, images: torch.Tensor) -> torch.Tensor:
        # The image tower has no prompts: its features are the same for every member.
        f = F.normalize(self.vision(images), dim=-1)  # [B,E]
        return self._logits(f[None].expand(self.members, -1, -1))

    def member_losses(self, batch, epoch=0, epochs=1, streams=None) -> Terms:
        f = F.normalize(self.vision(batch["image"]), dim=-1)  # [K·B,E]
        logits = self._logits(f.view(self.members, -1, f.shape[-1])).float()
        labels = batch["label"].view(self.members, -1)
        w = torch.tensor([[c.loss.ce] for c in self.cfgs], device=logits.device)
        return Terms(("ce",), w * _ce(logits, labels)[:, None], [("ce",)] * self.members)
