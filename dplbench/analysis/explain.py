"""`dplbench explain`: IWTD's token maps and Grad-CAM for a trained job (or an untrained method) on
a few test images of its dataset (the paper's Fig. 5a and token figures).

What is explained: the job's own model (its recorded config, seed and final prompts from
`R/checkpoints/<job>/final.pt`) on the test split of its first evaluation target, next to zero-shot
CLIP on the same frozen backbone. Written to the output folder, each file published atomically:
`image_NN.png` (one grid per image), `text_tokens.md` (the text side, per prompt token) and
`maps.npz` (every map as arrays, for one's own figures; plain arrays, no pickles).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from dpl import explain as ex
from dpl.config import MethodConfig
from dpl.methods import build_method, method_config
from dpl.methods.base import PromptedCLIP
from dpl.typed import to_dict
from dplbench import storage
from dplbench.analysis import figures
from dplbench.data.shards import eval_loader
from dplbench.data.transforms import ViewConfig
from dplbench.data.view import DatasetView
from dplbench.errors import UserError
from dplbench.plan.jobs import EvalTarget, Job
from dplbench.plan.llm import cache_dirs, cache_for
from dplbench.plan.methods import resolve_method
from dplbench.results import store
from dplbench.results.root import ExplainFiles, ResultsRoot
from dplbench.run.evaluate import image_size
from dplbench.run.worker import frozen_clip, load_final_state, seed_everything

SCAN_PER_IMAGE = 64  # samples read per requested image while looking for distinct classes


@dataclass(frozen=True)
class Subject:
    """What to explain: a method config on a dataset view, and whose prompts it loads (if any)."""

    name: str  # a label for titles and the default output folder
    method: str
    config: MethodConfig
    seed: int
    target: EvalTarget
    shots: int | None = None
    state_of: str | None = None  # job id whose final.pt holds the trained prompts


@dataclass
class Explained:
    out: str
    figures: list[str] = field(default_factory=list)
    table: str = ""
    arrays: str = ""
    text: str = ""  # the text-side table, Markdown


def job_subject(
    root: ResultsRoot, job_id: str, dataset: str | None = None, llm_cache: str | None = None
) -> Subject:
    """A finished job of the results, by id: its recorded config and its final prompts (and, for
    an LLM-source method, the LLM cache it was trained with: `llm_cache`, checked)."""
    if not store.has_rows(root):
        raise UserError(f"no results under {root}; run a suite first or pass --results")
    rows = store.query(
        root,
        "SELECT config FROM rows WHERE job_id = $id ORDER BY created_at DESC LIMIT 1",
        {"id": job_id},
    ).to_pylist()
    if not rows:
        raise UserError(
            f"no result rows for job {job_id} under {root}; list job ids with "
            'dplbench results query "SELECT DISTINCT job_id, method, dataset FROM results"'
        )
    try:
        job = Job.from_description(json.loads(rows[0]["config"]))
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"job {job_id}: cannot rebuild it from its rows ({e})") from None
    targets = [t for t in job.evals if dataset is None or t.dataset == dataset]
    if not targets:
        raise UserError(
            f"job {job_id} evaluates {sorted({t.dataset for t in job.evals})}, not {dataset}"
        )
    # The recorded id names its files: rows written before the id rules changed keep theirs.
    state_of = job.source or (job_id if job.trains else None)
    config = job.config
    if job.llm is not None:
        if job.id == job_id:  # a job planned against a cache: the one that holds its knowledge
            cache = cache_for(job, cache_dirs(llm_cache))
        else:
            cache = cache_dirs(llm_cache)[0]
        config = replace(config, llm=replace(config.llm, cache=cache))
    return Subject(
        f"{job.method}-{job_id}", job.method, config, job.seed, targets[0], job.train.shots,
        state_of,
    )  # fmt: skip


def method_subject(
    method: str, dataset: str, overrides: dict[str, Any], seed: int, protocol: str | None
) -> Subject:
    """An untrained method (its recipe's config, prompts at their seeded initialisation)."""
    cfg = resolve_method(method, overrides, protocol=protocol, dataset=dataset)
    return Subject(f"{method}-{dataset}-untrained", method, cfg, seed, EvalTarget(dataset))


def default_layers(model: PromptedCLIP) -> list[int]:
    """First, middle and last layer where IWTD acts (prompt depth if IWTD is off, the whole
    tower if the method has no vision prompts)."""
    n = model.iwtd_layers["vision"] if model.cfg.iwtd.enabled else model.depth_vision
    n = n or model.vision.layers
    return sorted({0, n // 2, n - 1})


def check_layers(layers: list[int], model: PromptedCLIP) -> None:
    bad = [i for i in layers if not 0 <= i < model.vision.layers]
    if bad:
        raise UserError(
            f"--layers {bad[0]}: the vision tower has layers 0..{model.vision.layers - 1}"
        )


def pick_images(view: DatasetView, k: int, size: int) -> dict[str, torch.Tensor]:
    """k test images of distinct classes where the first k*SCAN_PER_IMAGE samples have them,
    filled up with the first others (deterministic: the view's shard order)."""
    loader = eval_loader(view, 64, ViewConfig(size, "test"), 0, 0, 1)
    chosen: list[tuple[torch.Tensor, int]] = []
    spare: list[tuple[torch.Tensor, int]] = []
    seen = 0
    for batch in loader:
        for img, label in zip(batch["image"], batch["label"].tolist()):
            if label not in {c[1] for c in chosen}:
                chosen.append((img, label))
            elif len(spare) < k:
                spare.append((img, label))
            seen += 1
            if len(chosen) == k or seen >= k * SCAN_PER_IMAGE:
                break
        if len(chosen) == k or seen >= k * SCAN_PER_IMAGE:
            break
    chosen = (chosen + spare)[:k]
    if not chosen:
        raise UserError(f"{view.dataset}/{view.split} has no images to explain")
    return {
        "image": torch.stack([c[0] for c in chosen]),
        "label": torch.tensor([c[1] for c in chosen]),
    }


def build(subject: Subject, root: ResultsRoot, device: torch.device) -> PromptedCLIP:
    clip = frozen_clip(subject.config.backbone)
    seed_everything(subject.seed)  # the same prompt initialisation as the job's
    model = build_method(subject.config, clip).to(device)
    if subject.state_of is not None:
        load_final_state(model, root, subject.state_of, "dplbench explain")
    return model.eval()


def zero_shot(model: PromptedCLIP) -> PromptedCLIP:
    """Zero-shot CLIP on the same frozen backbone (for the Grad-CAM comparison)."""
    cfg = method_config("zsclip", {"backbone": to_dict(model.cfg.backbone)})
    return build_method(cfg, model.clip).eval()


def explain(
    subject: Subject,
    data: str,
    root: ResultsRoot,
    out: str | None = None,
    images: int = 4,
    layers: list[int] | None = None,
    device: torch.device | None = None,
) -> Explained:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if images < 1:
        raise UserError(f"--images {images}: ask for at least one image")
    model = build(subject, root, device)
    layers = layers if layers is not None else default_layers(model)
    check_layers(layers, model)
    text_layers = [i for i in layers if i < model.text.layers]
    t = subject.target
    view = DatasetView.open(data, t.dataset, t.split, subject.shots, subject.seed, t.subsample)
    batch = pick_images(view, images, image_size(model))
    x = batch["image"].to(device)
    model.set_classes(view.classnames, view.template, view.dataset)
    zs = zero_shot(model)
    zs.set_classes(view.classnames, view.template, view.dataset)

    generator = torch.Generator(device=device).manual_seed(subject.seed)
    maps = ex.importance_maps(model, x, layers, text_layers, generator)
    cam, pred = ex.gradcam(model, x)
    cam_zs, pred_zs = ex.gradcam(zs, x)

    grid = ex.patch_grid(model)
    arrays = figures.vision_arrays([m for m in maps if m.modality == "vision"], grid)
    arrays.update(
        images=figures.to_uint8(batch["image"]),
        labels=batch["label"].numpy(),
        classnames=np.array(view.classnames),
        layers=np.array(layers),
        gradcam_method=cam.cpu().numpy(),
        gradcam_zsclip=cam_zs.cpu().numpy(),
        pred_method=pred.cpu().numpy(),
        pred_zsclip=pred_zs.cpu().numpy(),
    )
    files = ExplainFiles(out) if out else root.explain_files(subject.name)
    result = Explained(files.folder)
    for i in range(len(x)):
        used = maps[0].used if maps else ()
        fig = figures.image_grid(arrays, i, subject.method, used)
        path = files.image(i)
        result.figures.append(
            storage.write(path, lambda tmp, f=fig: f.savefig(tmp, format="png", dpi=100))
        )
    classes = sorted(set(pred.tolist()))
    text_maps = [m for m in maps if m.modality == "text"]
    result.text = figures.text_table(model, text_maps, classes, view.classnames, subject.name)
    result.table = storage.write(files.text_tokens, result.text)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    result.arrays = storage.write(files.arrays, buf.getvalue())
    return result
