"""Template sets for the frozen text features t^o (docs/dpl.md §1).

- "dataset": the dataset's hand-crafted template (CoOp trainers/zsclip.py `CUSTOM_TEMPLATES`).
- "promptsrc": the 60 ImageNet templates PromptSRC's teacher averages for every dataset
  (PromptSRC trainers/imagenet_templates.py `IMAGENET_TEMPLATES`, in the release's order).
- "openai_imagenet": CLIP's 80 ImageNet templates (open_clip's copy).
"""

from __future__ import annotations

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

TEMPLATE_SETS = ("dataset", "promptsrc", "openai_imagenet")
# Sets whose per-template text features are averaged before normalising (PromptSRC
# trainers/promptsrc.py: `encode_text` outputs stacked, `.mean(dim=1)`, normalised in forward);
# the others average normalised features (CLIP's zero-shot classifier).
RAW_MEAN_SETS = ("promptsrc",)

PROMPTSRC_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
)


def template_set(name: str, dataset_template: str) -> tuple[str, ...]:
    """The templates ("{}" = class name) whose text features are averaged into t^o."""
    if name == "dataset":
        return (dataset_template,)
    if name == "promptsrc":
        return PROMPTSRC_TEMPLATES
    if name == "openai_imagenet":
        return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
    raise ValueError(f"templates={name!r}: choose one of {TEMPLATE_SETS}")
