"""Zero-shot CLIP: the dataset's hand-crafted template(s), nothing trained (docs/method.md §6)."""

import torch

from dpl.methods import register
from dpl.methods.base import PromptedCLIP
from dpl.methods.config import MethodConfig
from dpl.prompts import PromptConfig


class ZeroShotCLIP(PromptedCLIP):
    def text_features(self, hook=None) -> torch.Tensor:
        return self.classes.frozen_text

    def losses(self, batch, epoch=0, epochs=1, generator=None):
        raise RuntimeError("zsclip has no trainable parameters; evaluate it directly")


register(
    "zsclip",
    MethodConfig(method="zsclip", prompts=PromptConfig(n_ctx_text=0, depth_text=0)),
    ZeroShotCLIP,
    plugins=False,
)
