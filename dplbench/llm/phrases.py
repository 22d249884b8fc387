"""The cache step's phrase extractor: what turns an LLM description into the noun phrases that
the KV pass reads and the teacher text joins (dplbench/llm/build.py step 3).

Both releases run spaCy's `en_core_web_sm` noun chunks (DroPLe / LLaMP tools/run_inference_chat.py;
their requirements pin spaCy 3.7.2). `--phrases` names the extractor:

    spacy:<pipeline>   noun chunks of a spaCy pipeline, a package name (default en_core_web_sm)
                       or a pipeline folder, loaded with spacy.load
    none               no extraction: each description stands in for its phrases (a deviation
                       the user asks for: docs/deviations.md §2)

The manifest records the extractor (spaCy's version, the pipeline's name and version, or "none"),
and it enters every job's identity. A cache made without either (spaCy missing, by an older
dplbench) is refused by the jobs that read phrases (dpl/llm/manifest.py `misfit`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dplbench.errors import ConfigError, UserError

DEFAULT = "spacy:en_core_web_sm"
NONE = "none"
INSTALL = "pip install 'dplbench[llm]' && python -m spacy download en_core_web_sm"


@dataclass(frozen=True)
class Extractor:
    record: dict[str, Any] | str  # what the manifest says about it ("none", or spaCy's facts)
    kind: str  # a dataset entry's `phrases`: "spacy_noun_chunks" or "none"
    chunks: Callable[[str], list[str] | None]  # None: the description is its own phrase


def load_extractor(spec: str = DEFAULT) -> Extractor:
    """The extractor `spec` names (module docstring); one line naming the fix when it cannot load."""
    if spec == NONE:
        return Extractor(NONE, NONE, lambda text: None)
    kind, _, pipeline = spec.partition(":")
    if kind != "spacy" or not pipeline:
        raise ConfigError(f"--phrases {spec!r}: give spacy:<pipeline> (default {DEFAULT}) or none")
    try:
        import spacy
    except ImportError:
        raise UserError(
            f"--phrases {spec}: spaCy is not installed; {INSTALL} (or --phrases none: whole "
            "descriptions instead of the releases' noun phrases, docs/deviations.md §2)"
        ) from None
    try:
        nlp = spacy.load(pipeline)
    except OSError:
        raise UserError(
            f"--phrases {spec}: spaCy has no pipeline {pipeline!r}; python -m spacy download "
            f"{pipeline} (or --phrases none: whole descriptions, docs/deviations.md §2)"
        ) from None
    meta = nlp.meta
    record = {
        "extractor": "spacy_noun_chunks",
        "spacy": spacy.__version__,
        "pipeline": f"{meta.get('lang', '')}_{meta.get('name', '')}",
        "version": meta.get("version"),
    }
    return Extractor(
        record, "spacy_noun_chunks", lambda text: [c.text for c in nlp(text).noun_chunks]
    )


def record_label(record: dict[str, Any] | str | None) -> str:
    """One line for messages: "none", "spacy 3.7.2 en_core_web_sm 3.7.1", or "unrecorded"."""
    if record is None:
        return "unrecorded"
    if isinstance(record, str):
        return record
    return f"spacy {record['spacy']} {record['pipeline']} {record['version']}"


def write_standin_pipeline(out: str, min_length: int = 4) -> str:
    """A spaCy pipeline folder without trained weights whose noun chunks are the words of at
    least `min_length` letters (an attribute ruler tags them as nouns): the real extractor's
    path (spacy.load, noun_chunks) on machines that cannot download en_core_web_sm, for tests and
    `dplbench llm tiny`. It knows no English."""
    import spacy

    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("attribute_ruler")
    ruler.add([[{"IS_ALPHA": True, "LENGTH": {">=": min_length}}]], {"POS": "NOUN", "DEP": "ROOT"})
    nlp.meta.update(name="standin_phrases", version="0.0.0")
    nlp.to_disk(out)
    return out
