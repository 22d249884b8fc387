"""CoCoOp: CoOp's context shifted per image by a meta-net on the image feature, so the text encoder
runs per image over all classes (docs/dpl.md §6)."""

import torch
import torch.nn.functional as F
from torch import nn

from dpl.methods.base import PromptedCLIP


class CoCoOp(PromptedCLIP):
    def __init__(self, cfg, clip=None) -> None:
        super().__init__(cfg, clip)
        d = self.clip.visual.output_dim
        self.meta_net = nn.Sequential(
            nn.Linear(d, max(d // 16, 1)),
            nn.ReLU(inplace=True),
            nn.Linear(max(d // 16, 1), self.text.width),
        )

    def _per_image_logits(self, images: torch.Tensor) -> torch.Tensor:
        f = F.normalize(self.vision(images), dim=-1)  # [B,E]; the image tower has no prompts
        ctx = self.text_prompts()[0]  # [n,Dt]
        shifted = ctx[None] + self.meta_net(f)[:, None]  # [B,n,Dt]
        cs = self.classes
        B, C = f.shape[0], cs.embedded.shape[0]
        t = self.text(
            cs.embedded.repeat(B, 1, 1), cs.eot.repeat(B), [shifted.repeat_interleave(C, 0)]
        )  # [B*C,E]
        t = F.normalize(t, dim=-1).view(B, C, -1)
        with torch.autocast(f.device.type, enabled=False):  # fp32 logits under autocast
            return self.logit_scale * torch.einsum("be,bce->bc", f.float(), t.float())

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self._per_image_logits(images)

    forward = logits

    def losses(self, batch, epoch=0, epochs=1, generator=None):
        logits = self._per_image_logits(batch["image"]).float()
        return {"ce": self.cfg.loss.ce * F.cross_entropy(logits, batch["label"])}

    @classmethod
    def fused_losses(cls, runs, batches, epoch=0, epochs=None):
        """Several CoCoOp runs in one pass per tower: the image tower (no prompts: the frozen
        one) over every run's batch, each run's meta-net shift of its context, then the text
        tower over every run's B·C sequences; CE per run (as `losses`)."""
        ids = runs.active(batches)
        members = [runs.members[k] for k in ids]
        mine = [batches[k] for k in ids]
        counts = [len(b["label"]) for b in mine]
        feats = members[0].vision(torch.cat([b["image"] for b in mine])).split(counts)
        cs = members[0].classes
        C = cs.embedded.shape[0]
        embedded, eot, ctx = [], [], []
        for m, f in zip(members, feats):
            f = F.normalize(f, dim=-1)
            shifted = m.text_prompts()[0][None] + m.meta_net(f)[:, None]  # [B,n,Dt]
            embedded.append(cs.embedded.repeat(f.shape[0], 1, 1))
            eot.append(cs.eot.repeat(f.shape[0]))
            ctx.append(shifted.repeat_interleave(C, 0))
        t = members[0].text(torch.cat(embedded), torch.cat(eot), [torch.cat(ctx)])
        t = F.normalize(t, dim=-1).split([n * C for n in counts])
        out = [None] * len(batches)
        for j, k in enumerate(ids):
            m, f = members[j], F.normalize(feats[j], dim=-1)
            with torch.autocast(f.device.type, enabled=False):
                logits = m.logit_scale * torch.einsum(
                    "be,bce->bc", f.float(), t[j].view(counts[j], C, -1).float()
                )
            out[k] = {"ce": m.cfg.loss.ce * F.cross_entropy(logits.float(), mine[j]["label"])}
        return out
