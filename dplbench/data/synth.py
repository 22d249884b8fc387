"""Synthetic data in the CoOp layout: a small learnable benchmark, and mini $DATA trees for tests.

`make_synthetic` writes `$DATA/synthetic/` (dataset key `synthetic`): real JPEG files whose
classes differ in background hue, shape and shape colour, so a tiny CLIP separates them within a
few steps; class names are real words. `make_mini_coop_tree` writes a few tiny images for each of
the 15 benchmarks in their exact CoOp layouts (the layout comes from each registry entry's reader
kind), for tests of conversion, relabelling and protocols.
"""

from __future__ import annotations

import colorsys
import json
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

from dplbench.data.datasets import BENCHMARKS, DatasetSpec, get_spec

# Real words as class names; a few carry underscores, as CoOp's class names do.
WORDS = [
    "apple", "zebra", "banana", "castle", "dolphin", "violin", "tulip", "rocket", "pumpkin",
    "lighthouse", "tiger", "bicycle", "cactus", "penguin", "guitar", "volcano", "strawberry",
    "owl", "submarine", "umbrella", "sea_lion", "fire_truck", "giraffe", "lemon", "anchor",
    "butterfly", "cherry", "kangaroo", "ladder", "mushroom", "octopus", "piano", "rainbow",
    "snail", "teapot", "windmill", "hot_air_balloon", "igloo", "jellyfish", "koala", "lobster",
    "maple_leaf", "narwhal", "orchid", "parrot", "quokka", "raccoon", "saxophone",
]  # fmt: skip
SHAPES = ("ellipse", "rectangle", "triangle", "stripes", "cross")


def class_name(i: int) -> str:
    """The i-th synthetic class name (words first, then numbered words)."""
    word = WORDS[i % len(WORDS)]
    return word if i < len(WORDS) else f"{word}_{i // len(WORDS)}"


def class_image(label: int, n_classes: int, size: int, rng: random.Random) -> Image.Image:
    """An RGB image of class `label`: background hue label/n, a shape chosen by label, in the
    complementary hue; position, scale and brightness jitter come from `rng`."""
    hue = label / max(n_classes, 1)
    bg = colorsys.hsv_to_rgb(hue, 0.55, rng.uniform(0.7, 0.95))
    fg = colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.9, rng.uniform(0.3, 0.6))
    img = Image.new("RGB", (size, size), tuple(int(255 * c) for c in bg))
    draw = ImageDraw.Draw(img)
    color = tuple(int(255 * c) for c in fg)
    s = rng.uniform(0.35, 0.6) * size
    x, y = rng.uniform(0, size - s), rng.uniform(0, size - s)
    shape = SHAPES[label % len(SHAPES)]
    if shape == "ellipse":
        draw.ellipse([x, y, x + s, y + s], fill=color)
    elif shape == "rectangle":
        draw.rectangle([x, y, x + s, y + s], fill=color)
    elif shape == "triangle":
        draw.polygon([(x, y + s), (x + s / 2, y), (x + s, y + s)], fill=color)
    elif shape == "stripes":
        step = max(2, size // 8)
        for yy in range(0, size, 2 * step):
            draw.rectangle([0, yy, size, yy + step - 1], fill=color)
    else:
        w = max(1, int(s / 4))
        draw.rectangle([x, y + s / 2 - w, x + s, y + s / 2 + w], fill=color)
        draw.rectangle([x + s / 2 - w, y, x + s / 2 + w, y + s], fill=color)
    return img


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=90) if path.suffix == ".jpg" else img.save(path)


def _split_sizes(per_class: int) -> dict[str, int]:
    """60/20/20 per class, at least one image in each split when per_class >= 3."""
    n_val = max(1, round(per_class * 0.2)) if per_class >= 3 else 0
    n_test = max(1, round(per_class * 0.2)) if per_class >= 2 else 0
    return {"train": per_class - n_val - n_test, "val": n_val, "test": n_test}


def make_synthetic(
    out: str | Path, classes: int = 10, per_class: int = 30, size: int = 64, seed: int = 0
) -> Path:
    """Write `out/synthetic/` in the CoOp split-JSON layout; returns that folder."""
    spec = get_spec("synthetic")
    base = Path(out) / spec.folder
    rng = random.Random(seed)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    sizes = _split_sizes(per_class)
    for label in range(classes):
        name = class_name(label)
        i = 0
        for part, n in sizes.items():
            for _ in range(n):
                rel = f"{name}/{name}_{i:04d}.jpg"
                _save(class_image(label, classes, size, rng), base / spec.image_dir / rel)
                split[part].append([rel, label, name])
                i += 1
    (base / spec.split_file).write_text(json.dumps(split))
    return base


# ---- mini $DATA trees for tests: one writer per reader kind ---------------------------------


def _wnids(n: int) -> list[str]:
    return [f"n{1000 + 7 * i:08d}" for i in range(n)]


def _write_classnames(path: Path, wnids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(f"{w} {class_name(i).replace('_', ' ')}\n" for i, w in enumerate(wnids))
    )


def _mini_split_json(spec, root, n_cls, per, size, rng, ctx) -> None:
    base = root / spec.folder
    split: dict[str, list] = {}
    for part in ("train", "val", "test"):
        split[part] = []
        for label in range(n_cls):
            name = class_name(label)
            for i in range(per):
                rel = f"{name}/{part}_{i:03d}.jpg"
                _save(class_image(label, n_cls, size, rng), base / spec.image_dir / rel)
                split[part].append([rel, label, name])
    (base / spec.split_file).write_text(json.dumps(split))


def _mini_aircraft_txt(spec, root, n_cls, per, size, rng, ctx) -> None:
    base = root / spec.folder
    variants = [f"{class_name(c).replace('_', ' ').title()} {700 + c}-200" for c in range(n_cls)]
    (base / "variants.txt").parent.mkdir(parents=True, exist_ok=True)
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    image_id = 1000000
    for part in ("train", "val", "test"):
        lines = []
        for label in range(n_cls):
            for _ in range(per):
                image_id += 1
                _save(class_image(label, n_cls, size, rng), base / "images" / f"{image_id}.jpg")
                lines.append(f"{image_id} {variants[label]}")
        (base / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")


def _mini_imagenet_folders(spec, root, n_cls, per, size, rng, ctx) -> None:
    base = root / spec.folder
    wnids = ctx["wnids"]
    _write_classnames(base / "classnames.txt", wnids)
    for sub in ("train", "val"):
        for label, w in enumerate(wnids):
            for i in range(per):
                img = class_image(label, len(wnids), size, rng)
                _save(img, base / spec.image_dir / sub / w / f"{w}_{sub}_{i}.jpg")


def _mini_index_folders(spec, root, n_cls, per, size, rng, ctx) -> None:
    # No classnames.txt of its own: names come from $DATA/imagenet/classnames.txt by index.
    # PNG files check that the source extension is kept.
    for label in range(len(ctx["wnids"])):
        for i in range(per):
            img = class_image(label, len(ctx["wnids"]), size, rng)
            _save(img, root / spec.folder / spec.image_dir / str(label) / f"{i}.png")


def _mini_wnid_folders(spec, root, n_cls, per, size, rng, ctx) -> None:
    # A copy of classnames.txt in its own folder, as CoOp's instructions have it.
    wnids = ctx["wnids"]
    _write_classnames(root / spec.folder / "classnames.txt", wnids)
    for label, w in enumerate(wnids):
        for i in range(per):
            img = class_image(label, len(wnids), size, rng)
            _save(img, root / spec.folder / spec.image_dir / w / f"sketch_{i}.jpg")


def _mini_wnid_folders_200(spec, root, n_cls, per, size, rng, ctx) -> None:
    # Every other ImageNet class (indices 1, 3, 5, ...): relabelled 0, 1, 2, ... in order.
    for w in ctx["wnids"][1::2]:
        label = ctx["wnids"].index(w)
        for i in range(per):
            img = class_image(label, len(ctx["wnids"]), size, rng)
            _save(img, root / spec.folder / spec.image_dir / w / f"{w}_{i}.jpg")


MiniWriter = Callable[..., None]
_MINI_WRITERS: dict[str, MiniWriter] = {
    "split_json": _mini_split_json,
    "aircraft_txt": _mini_aircraft_txt,
    "imagenet_folders": _mini_imagenet_folders,
    "index_folders": _mini_index_folders,
    "wnid_folders": _mini_wnid_folders,
    "wnid_folders_200": _mini_wnid_folders_200,
}


def mini_class_count(spec: DatasetSpec, classes: int, real_below: int = 40) -> int:
    """Datasets with few real classes keep their real count (oxford_pets: 37, so its 19/18
    base/novel split is testable; eurosat: 10); the others get `classes`."""
    return spec.classes if spec.classes <= real_below else classes


def make_mini_coop_tree(
    root: str | Path,
    classes: int = 3,
    per_class: int = 2,
    size: int = 12,
    seed: int = 0,
    datasets: list[str] | None = None,
) -> Path:
    """A mini $DATA for the 15 benchmarks (or `datasets`) in the CoOp layout.

    Per split and class `per_class` images. ImageNet has 2*`classes` wnids; ImageNetV2 and
    -Sketch have all of them, ImageNet-A/-R every other one (indices 1, 3, ...)."""
    root = Path(root)
    rng = random.Random(seed)
    ctx = {"wnids": _wnids(2 * classes)}
    for key in datasets or BENCHMARKS:
        spec = get_spec(key)
        n_cls = mini_class_count(spec, classes)
        _MINI_WRITERS[spec.reader](spec, root, n_cls, per_class, size, rng, ctx)
    return root
