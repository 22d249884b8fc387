"""`dplbench data verify`: check converted shards against their metadata.

Per split: nshards.txt, every listed shard present and readable, per-shard and per-label
counts, unique keys, labels in range, `txt` equal to the class name, every image decodable;
index.parquet and classnames.txt consistent with dplbench.json; few-shot sets complete.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from pathlib import Path

from PIL import Image

from dplbench.data import tario
from dplbench.data.errors import CorruptShardError, DataError
from dplbench.data.meta import FEWSHOT_DIR, SELECTION_FILE, SplitMeta, load_index, load_meta
from dplbench.data.shards import IMAGE_EXTS

log = logging.getLogger(__name__)


def _check_split(base: Path, name: str, m: SplitMeta, classnames: list[str], problems: list):
    """Read one split's shards; append problems; return the keys seen."""
    where = f"{base.name}/{name}" if base.name else name
    keys: list[str] = []
    labels: Counter[int] = Counter()
    split_dir = base / name
    nfile = split_dir / "nshards.txt"
    if not nfile.is_file():
        problems.append(f"{where}: {nfile} missing")
    elif nfile.read_text().strip() != str(len(m.shards)):
        problems.append(
            f"{where}: nshards.txt says {nfile.read_text().strip()}, metadata lists "
            f"{len(m.shards)} shards"
        )
    for rel, expected in zip(m.shards, m.shard_counts, strict=True):
        path = base / rel
        if not path.is_file():
            problems.append(f"{where}: shard {path} missing")
            continue
        n = 0
        try:
            for s in tario.iter_samples(str(path)):
                n += 1
                keys.append(s["__key__"])
                problems.extend(_check_sample(path, s, classnames, labels))
        except CorruptShardError as e:
            problems.append(str(e))
        if n != expected:
            problems.append(f"{path}: {n} samples, metadata says {expected}")
    if len(keys) != m.count:
        problems.append(f"{where}: {len(keys)} samples, metadata says {m.count}")
    if len(set(keys)) != len(keys):
        problems.append(f"{where}: {len(keys) - len(set(keys))} duplicate keys")
    if m.label_counts and [labels.get(i, 0) for i in range(len(m.label_counts))] != m.label_counts:
        problems.append(f"{where}: samples per label differ from the metadata")
    return keys


def _check_sample(path, s, classnames, labels) -> list[str]:
    key = s["__key__"]
    try:
        label = int(s["cls"])
    except (KeyError, ValueError):
        return [f"{path}: sample {key}: no integer cls"]
    labels[label] += 1
    out = []
    if not 0 <= label < len(classnames):
        out.append(f"{path}: sample {key}: label {label} outside 0..{len(classnames) - 1}")
    elif s.get("txt", b"").decode() != classnames[label]:
        out.append(f"{path}: sample {key}: txt {s.get('txt')!r} != {classnames[label]!r}")
    ext = next((e for e in IMAGE_EXTS if e in s), None)
    if ext is None:
        return [*out, f"{path}: sample {key}: no image"]
    try:
        with Image.open(io.BytesIO(s[ext])) as img:
            img.load()
    except Exception as e:  # any decoder failure is a problem to report
        out.append(f"{path}: sample {key}: undecodable {ext}: {e}")
    return out


def verify_dataset(shards_root: str | Path, key: str) -> list[str]:
    """Problems found in one converted dataset (empty when all is well)."""
    problems: list[str] = []
    try:
        meta = load_meta(shards_root, key)
    except DataError as e:
        return [str(e)]
    base = Path(shards_root) / key
    names_file = base / "classnames.txt"
    if not names_file.is_file() or names_file.read_text().splitlines() != meta.classnames:
        problems.append(f"{key}: {names_file} missing or different from dplbench.json")
    all_keys: list[str] = []
    for split, m in meta.splits.items():
        all_keys += _check_split(base, split, m, meta.classnames, problems)
    index = load_index(shards_root, key)
    if sorted(index["key"].to_pylist()) != sorted(all_keys):
        problems.append(f"{key}: index.parquet keys differ from the shards")
    for sel_dir in sorted((base / FEWSHOT_DIR).glob("[!.]*")):
        sel_file = sel_dir / SELECTION_FILE
        if not sel_file.is_file():
            problems.append(f"{sel_dir}: {SELECTION_FILE} missing")
            continue
        sel = json.loads(sel_file.read_text())
        for split, m in sel["splits"].items():
            got = _check_split(sel_dir, split, SplitMeta(**m), meta.classnames, problems)
            if sorted(got) != sorted(sel["keys"][split]):
                problems.append(f"{sel_dir}/{split}: keys differ from {SELECTION_FILE}")
    return problems


def verify(shards_root: str | Path, datasets: list[str]) -> dict[str, list[str]]:
    """dataset -> problems, for every dataset given."""
    return {key: verify_dataset(shards_root, key) for key in datasets}
