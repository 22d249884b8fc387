"""Template sets for the frozen text features t^o (METHOD.md §1)."""

from __future__ import annotations

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

TEMPLATE_SETS = ("dataset", "openai_imagenet")


def template_set(name: str, dataset_template: str) -> tuple[str, ...]:
    """'dataset': the dataset's hand-crafted template; 'openai_imagenet': CLIP's 80 ImageNet ones."""
    if name == "dataset":
        return (dataset_template,)
    if name == "openai_imagenet":
        return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
    raise ValueError(f"templates={name!r}: choose one of {TEMPLATE_SETS}")
