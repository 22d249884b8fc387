"""Reading $DATA in the CoOp layout (docs/protocols.md §1): one reader per layout kind.

A reader turns `$DATA/<folder>` into a `SourceDataset`: class names, and per split the list of
(image path, label) in the order of the split source. The reader kind is data in the dataset's
`DatasetSpec.reader`; the readers are registered here by kind.

Folder-based layouts list image files sorted by name (CoOp uses the unsorted `os.listdir` order,
which depends on the filesystem; sorting makes the few-shot draw reproducible across machines).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dpl.files import sha256_file
from dpl.registry import Registry
from dplbench.data.datasets import IMAGENET_KEY, DatasetSpec, get_spec
from dplbench.data.errors import DataError


@dataclass(frozen=True)
class SourceItem:
    path: Path  # absolute path of the image
    rel: str  # path relative to $DATA/<folder>, as shown in messages and the index
    label: int


@dataclass
class SourceDataset:
    key: str
    raw_classnames: list[str]  # as in the source (underscores kept)
    splits: dict[str, list[SourceItem]]  # split -> items in split-source order
    files: list[Path] = field(default_factory=list)  # split files read (checksummed)

    def checksums(self, root: Path) -> tuple[dict[str, str], str]:
        """sha256 of each split file, and one checksum over those plus the item lists."""
        files = {str(p.relative_to(root)): sha256_file(p) for p in self.files}
        h = hashlib.sha256(json.dumps(files, sort_keys=True).encode())
        for split in sorted(self.splits):
            for it in self.splits[split]:
                h.update(f"{split}\t{it.rel}\t{it.label}\n".encode())
        h.update("\n".join(self.raw_classnames).encode())
        return files, h.hexdigest()


Reader = Callable[[DatasetSpec, Path], SourceDataset]
READERS: Registry[Reader] = Registry("reader")


def read_source(key: str, root: str | Path) -> SourceDataset:
    """Read dataset `key` from the CoOp-layout root `root` ($DATA)."""
    spec = get_spec(key)
    root = Path(root)
    _need_dir(spec, root / spec.folder)
    return READERS.get(spec.reader)(spec, root)


def _need_dir(spec: DatasetSpec, path: Path) -> Path:
    if not path.is_dir():
        raise DataError(f"{spec.key}: expected directory {path} (CoOp layout), not found")
    return path


def _need_file(spec: DatasetSpec, path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{spec.key}: expected file {path} (CoOp layout), not found")
    return path


def _subdirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith("."))


def _rel(spec: DatasetSpec, *parts: str) -> str:
    return "/".join(p for p in (spec.image_dir, *parts) if p)


@READERS.register("split_json")
def read_split_json(spec: DatasetSpec, root: Path) -> SourceDataset:
    """`split_zhou_*.json`: {"train"|"val"|"test": [[rel_path, label, classname], ...]}."""
    base = root / spec.folder
    split_path = _need_file(spec, base / spec.split_file)
    image_root = _need_dir(spec, base / spec.image_dir)
    try:
        data = json.loads(split_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{spec.key}: {split_path} is not valid JSON ({e})") from None
    names: dict[int, str] = {}
    splits: dict[str, list[SourceItem]] = {}
    for split in spec.splits:
        if split not in data:
            raise DataError(f"{spec.key}: {split_path} has no {split!r} list")
        items = []
        for entry in data[split]:
            rel, label, cname = entry[0], int(entry[1]), str(entry[2])
            if names.setdefault(label, cname) != cname:
                raise DataError(
                    f"{spec.key}: {split_path}: label {label} named both "
                    f"{names[label]!r} and {cname!r}"
                )
            items.append(SourceItem(image_root / rel, _rel(spec, rel), label))
        splits[split] = items
    if sorted(names) != list(range(len(names))):
        raise DataError(f"{spec.key}: {split_path}: labels are not 0..n-1")
    raw = [names[i] for i in range(len(names))]
    return SourceDataset(spec.key, raw, splits, [split_path])


@READERS.register("aircraft_txt")
def read_aircraft_txt(spec: DatasetSpec, root: Path) -> SourceDataset:
    """FGVC-Aircraft: `variants.txt` (label = line index) and `images_variant_<split>.txt`
    lines `<image_id> <variant name words>`; images `images/<image_id>.jpg`."""
    base = root / spec.folder
    variants_path = _need_file(spec, base / "variants.txt")
    image_root = _need_dir(spec, base / spec.image_dir)
    raw = [ln.strip() for ln in variants_path.read_text().splitlines() if ln.strip()]
    label_of = {name: i for i, name in enumerate(raw)}
    files = [variants_path]
    splits: dict[str, list[SourceItem]] = {}
    for split in spec.splits:
        path = _need_file(spec, base / f"images_variant_{split}.txt")
        files.append(path)
        items = []
        for ln in path.read_text().splitlines():
            if not ln.strip():
                continue
            image_id, _, variant = ln.strip().partition(" ")
            if variant not in label_of:
                raise DataError(f"{spec.key}: {path}: variant {variant!r} not in {variants_path}")
            name = f"{image_id}.jpg"
            items.append(SourceItem(image_root / name, _rel(spec, name), label_of[variant]))
        splits[split] = items
    return SourceDataset(spec.key, raw, splits, files)


def read_wnid_names(path: Path) -> dict[str, str]:
    """`classnames.txt`: one line per class, `<wnid> <class name words...>`, in file order."""
    names: dict[str, str] = {}
    for ln in path.read_text().splitlines():
        if ln.strip():
            wnid, _, name = ln.strip().partition(" ")
            names[wnid] = name.strip()
    return names


def _imagenet_names(spec: DatasetSpec, root: Path) -> tuple[dict[str, str], Path]:
    """CoOp puts a copy of ImageNet's classnames.txt in each variant's folder; without one,
    fall back to $DATA/imagenet/classnames.txt."""
    own = root / spec.folder / "classnames.txt"
    shared = root / get_spec(IMAGENET_KEY).folder / "classnames.txt"
    for path in (own, shared):
        if path.is_file():
            return read_wnid_names(path), path
    raise DataError(f"{spec.key}: expected file {own} or {shared} (CoOp layout), not found")


def _folder_items(spec: DatasetSpec, folder: Path, rel_parts: tuple[str, ...], label: int):
    return [SourceItem(folder / f, _rel(spec, *rel_parts, f), label) for f in _files(folder)]


@READERS.register("imagenet_folders")
def read_imagenet_folders(spec: DatasetSpec, root: Path) -> SourceDataset:
    """ImageNet: `images/{train,val}/n*/`; label = index of the wnid in the sorted train
    folders; names from classnames.txt. Its val set is written as `test` (and aliased as val)."""
    base = root / spec.folder
    names_path = _need_file(spec, base / "classnames.txt")
    names = read_wnid_names(names_path)
    image_root = _need_dir(spec, base / spec.image_dir)
    wnids = _subdirs(_need_dir(spec, image_root / "train"))
    if not wnids:
        raise DataError(f"{spec.key}: expected class folders n*/ in {image_root / 'train'}")
    missing = [w for w in wnids if w not in names]
    if missing:
        raise DataError(f"{spec.key}: {names_path} has no name for {missing[:5]}")
    label_of = {w: i for i, w in enumerate(wnids)}
    splits: dict[str, list[SourceItem]] = {}
    for split, sub in (("train", "train"), ("test", "val")):
        split_dir = _need_dir(spec, image_root / sub)
        items: list[SourceItem] = []
        for wnid in _subdirs(split_dir):
            if wnid not in label_of:
                raise DataError(f"{spec.key}: {split_dir / wnid} is not a train class folder")
            items += _folder_items(spec, split_dir / wnid, (sub, wnid), label_of[wnid])
        splits[split] = items
    return SourceDataset(spec.key, [names[w] for w in wnids], splits, [names_path])


@READERS.register("index_folders")
def read_index_folders(spec: DatasetSpec, root: Path) -> SourceDataset:
    """ImageNetV2: `<image_dir>/{0..999}/`; the folder name is the ImageNet label and the class
    names come from classnames.txt by index."""
    names, names_path = _imagenet_names(spec, root)
    raw = list(names.values())
    image_root = _need_dir(spec, root / spec.folder / spec.image_dir)
    folders = _subdirs(image_root)
    if not folders or not all(f.isdigit() and int(f) < len(raw) for f in folders):
        raise DataError(
            f"{spec.key}: expected index folders 0..{len(raw) - 1} in {image_root}, found "
            f"{folders[:5]}"
        )
    items: list[SourceItem] = []
    for f in sorted(folders, key=int):
        items += _folder_items(spec, image_root / f, (f,), int(f))
    return SourceDataset(spec.key, raw, {"test": items}, [names_path])


@READERS.register("wnid_folders")
def read_wnid_folders(spec: DatasetSpec, root: Path) -> SourceDataset:
    """ImageNet-Sketch: `images/n*/`, all ImageNet classes; label = index of the wnid in the
    sorted ImageNet wnids (equal to CoOp's sorted-folder index when all 1000 are present)."""
    names, names_path = _imagenet_names(spec, root)
    wnids = sorted(names)
    label_of = {w: i for i, w in enumerate(wnids)}
    image_root = _need_dir(spec, root / spec.folder / spec.image_dir)
    folders = _subdirs(image_root)
    unknown = [f for f in folders if f not in label_of]
    if not folders or unknown:
        raise DataError(
            f"{spec.key}: expected ImageNet wnid folders in {image_root}: {unknown[:5]}"
        )
    items: list[SourceItem] = []
    for f in folders:
        items += _folder_items(spec, image_root / f, (f,), label_of[f])
    return SourceDataset(spec.key, [names[w] for w in wnids], {"test": items}, [names_path])


@READERS.register("wnid_folders_200")
def read_wnid_folders_200(spec: DatasetSpec, root: Path) -> SourceDataset:
    """ImageNet-A/-R: `<image_dir>/n*/`, a subset of ImageNet's classes relabelled 0..C-1 in
    sorted folder order (200-way); names from classnames.txt via the wnid."""
    names, names_path = _imagenet_names(spec, root)
    image_root = _need_dir(spec, root / spec.folder / spec.image_dir)
    folders = _subdirs(image_root)
    unknown = [f for f in folders if f not in names]
    if not folders or unknown:
        raise DataError(
            f"{spec.key}: expected ImageNet wnid folders in {image_root}: {unknown[:5]}"
        )
    items: list[SourceItem] = []
    for label, f in enumerate(folders):
        items += _folder_items(spec, image_root / f, (f,), label)
    return SourceDataset(spec.key, [names[f] for f in folders], {"test": items}, [names_path])
