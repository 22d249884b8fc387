"""Zero-shot CLIP: the dataset's hand-crafted template(s), nothing trained (docs/dpl.md §6)."""

import torch

from dpl.methods.base import PromptedCLIP


class ZeroShotCLIP(PromptedCLIP):
    def text_features(self, hook=None, streams=None) -> torch.Tensor:
        return self.classes.frozen_text

    def member_losses(self, batch, epoch=0, epochs=1, streams=None):
        raise RuntimeError("zsclip has no trainable parameters; evaluate it directly")
