"""The frozen text target t^o of the LLM-source methods (`teacher.text`), as each release's tool
builds it from the LLM's description of each class (docs/dpl.md §7).

Both tools take the description the LLM wrote for the class under the FIRST of its templates, split
it into spaCy noun chunks, encode one string per chunk with CLIP's text tower, L2-normalise each and
average them per class (the model normalises the mean where it uses it):

- "drople": DroPLe tools/extract_clip_text_features_zs.py, the 'dw' branch (:105-141; the model
  reads `['dw'][split]['avg']`, models/drople.py:194-202): "{template without its final '.'} with
  {chunk}", its own reordered templates (CUSTOM_TEMPLATES :18-34, "a photo of a {}." for others);
  no chunk: the template alone.
- "llamp": LLaMP tools/extract_clip_text_features_zs.py (:73-104): "{template}with {chunk}" (no
  space before "with", as written), CoOp's templates (CUSTOM_TEMPLATES :14-30). No chunk crashes
  there (a mean over nothing); here, as DroPLe, the template alone.

Pure strings: the encoding is the model's (dpl/methods/llamp.py).
"""

from __future__ import annotations

TEACHER_TEXTS = ("template", "drople", "llamp")

# Per dataset (our keys), each release's template; datasets it does not name: "a photo of a {}."
TEMPLATES: dict[str, dict[str, str]] = {
    "drople": {
        "oxford_pets": "a type of pet, a photo of a {}.",
        "oxford_flowers": "a type of flower, a photo of a {}.",
        "fgvc_aircraft": "a type of aircraft, a photo of a {}.",
        "dtd": "a texture of {}.",
        "eurosat": "a centered satellite photo of {}.",
        "stanford_cars": "a photo of a {}.",
        "food101": "a type of food, a photo of {}.",
        "sun397": "a photo of a {}.",
        "caltech101": "a photo of a {}.",
        "ucf101": "a photo of a person doing {}.",
        "imagenet": "a photo of a {}.",
        "imagenet_sketch": "a photo of a {}.",
        "imagenetv2": "a photo of a {}.",
        "imagenet_a": "a photo of a {}.",
        "imagenet_r": "a photo of a {}.",
    },
    "llamp": {
        "oxford_pets": "a photo of a {}, a type of pet.",
        "oxford_flowers": "a photo of a {}, a type of flower.",
        "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
        "dtd": "{} texture.",
        "eurosat": "a centered satellite photo of {}.",
        "stanford_cars": "a photo of a {}.",
        "food101": "a photo of {}, a type of food.",
        "sun397": "a photo of a {}.",
        "caltech101": "a photo of a {}.",
        "ucf101": "a photo of a person doing {}.",
        "imagenet": "a photo of a {}.",
        "imagenet_sketch": "a photo of a {}.",
        "imagenetv2": "a photo of a {}.",
        "imagenet_a": "a photo of a {}.",
        "imagenet_r": "a photo of a {}.",
    },
}
DEFAULT_TEMPLATE = "a photo of a {}."


def teacher_strings(recipe: str, dataset: str | None, name: str, chunks: list[str]) -> list[str]:
    """The strings whose normalised CLIP text features average into class `name`'s target."""
    if recipe not in TEMPLATES:
        raise ValueError(f"teacher.text={recipe!r}: choose one of {TEACHER_TEXTS}")
    base = TEMPLATES[recipe].get(dataset or "", DEFAULT_TEMPLATE).format(name)
    if not chunks:
        return [base]
    if recipe == "drople":
        return [f"{base.rstrip('.')} with {c}" for c in chunks]
    return [f"{base}with {c}" for c in chunks]


def chunks_of(entry: dict, index: int, phrase_kind: str) -> list[str]:
    """Class `index`'s noun chunks under a cache's first template (entry: that template's record
    in <dataset>.json). A cache built without spaCy holds the description itself as its one
    "phrase" (the manifest's phrases kind says so)."""
    if "chunks" in entry:
        return list(entry["chunks"][index])
    if phrase_kind == "spacy_noun_chunks":
        return [c for c in entry["phrases"][index].split(", ") if c]
    return [entry["descriptions"][index]]
