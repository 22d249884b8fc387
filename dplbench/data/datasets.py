"""The 15 benchmarks of docs/protocols.md §1 (plus `synthetic`), registered by key.

Everything that differs between datasets is data in its `DatasetSpec`: the folder under $DATA,
the reader kind (a key of `coop_layout.READERS`), the split file, the image folder and the
hand-crafted template. Nothing branches on dataset names.
"""

from __future__ import annotations

from dataclasses import dataclass

from dpl.registry import Registry
from dplbench.data.errors import DataError

DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class DatasetSpec:
    key: str
    folder: str  # folder under $DATA (CoOp layout)
    reader: str  # reader kind: a key of coop_layout.READERS
    classes: (
        int  # class count of the real dataset (docs/protocols.md §1); mini trees may have fewer
    )
    template: str = DEFAULT_TEMPLATE  # hand-crafted template, "{}" is the class name
    image_dir: str = ""  # image folder relative to `folder` ("" = `folder` itself)
    split_file: str = ""  # split_json: the split file inside `folder`
    splits: tuple[str, ...] = ("train", "val", "test")  # splits written as shards
    # Splits served by another split's shards: ImageNet uses its val set as test (and val).
    aliases: tuple[tuple[str, str], ...] = ()
    benchmark: bool = True  # one of the 15 (`all`); False keeps `synthetic` apart
    label: str = ""  # display name in reports (the papers' spelling)
    # Sizes of the real dataset's train and test splits (docs/protocols.md §1), for estimates of
    # a suite's cost before its data is converted; 0 where not known.
    train_size: int = 0
    test_size: int = 0


DATASETS: Registry[DatasetSpec] = Registry("dataset")

_TEST_ONLY = ("test",)
_SPECS = [
    DatasetSpec(
        "imagenet", "imagenet", "imagenet_folders", 1000, image_dir="images",
        splits=("train", "test"), aliases=(("val", "test"),), label="ImageNet",
        train_size=1281167, test_size=50000,
    ),
    DatasetSpec(
        "caltech101", "caltech-101", "split_json", 100,
        image_dir="101_ObjectCategories", split_file="split_zhou_Caltech101.json",
        label="Caltech101",
        train_size=4128, test_size=2465,
    ),
    DatasetSpec(
        "oxford_pets", "oxford_pets", "split_json", 37, "a photo of a {}, a type of pet.",
        image_dir="images", split_file="split_zhou_OxfordPets.json", label="OxfordPets",
        train_size=2944, test_size=3669,
    ),
    DatasetSpec(
        "stanford_cars", "stanford_cars", "split_json", 196,
        # paths start cars_train/ or cars_test/
        split_file="split_zhou_StanfordCars.json", label="StanfordCars",
        train_size=6509, test_size=8041,
    ),
    DatasetSpec(
        "oxford_flowers", "oxford_flowers", "split_json", 102,
        "a photo of a {}, a type of flower.",
        image_dir="jpg", split_file="split_zhou_OxfordFlowers.json", label="Flowers102",
        train_size=4093, test_size=2463,
    ),
    DatasetSpec(
        "food101", "food-101", "split_json", 101, "a photo of {}, a type of food.",
        image_dir="images", split_file="split_zhou_Food101.json", label="Food101",
        train_size=50500, test_size=30300,
    ),
    DatasetSpec(
        "fgvc_aircraft", "fgvc_aircraft", "aircraft_txt", 100,
        "a photo of a {}, a type of aircraft.", image_dir="images", label="FGVCAircraft",
        train_size=3334, test_size=3333,
    ),
    DatasetSpec(
        "sun397", "sun397", "split_json", 397,
        image_dir="SUN397", split_file="split_zhou_SUN397.json", label="SUN397",
        train_size=15880, test_size=19850,
    ),
    DatasetSpec(
        "dtd", "dtd", "split_json", 47, "{} texture.",
        image_dir="images", split_file="split_zhou_DescribableTextures.json", label="DTD",
        train_size=2820, test_size=1692,
    ),
    DatasetSpec(
        "eurosat", "eurosat", "split_json", 10, "a centered satellite photo of {}.",
        image_dir="2750", split_file="split_zhou_EuroSAT.json", label="EuroSAT",
        train_size=13500, test_size=8100,
    ),
    DatasetSpec(
        "ucf101", "ucf101", "split_json", 101, "a photo of a person doing {}.",
        image_dir="UCF-101-midframes", split_file="split_zhou_UCF101.json", label="UCF101",
        train_size=7639, test_size=3783,
    ),
    DatasetSpec(
        "imagenetv2", "imagenetv2", "index_folders", 1000,
        image_dir="imagenetv2-matched-frequency-format-val", splits=_TEST_ONLY,
        label="ImageNet-V2",
        train_size=0, test_size=10000,
    ),
    DatasetSpec(
        "imagenet_sketch", "imagenet-sketch", "wnid_folders", 1000,
        image_dir="images", splits=_TEST_ONLY, label="ImageNet-Sketch",
        train_size=0, test_size=50889,
    ),
    DatasetSpec(
        "imagenet_a", "imagenet-adversarial", "wnid_folders_200", 200,
        image_dir="imagenet-a", splits=_TEST_ONLY, label="ImageNet-A",
        train_size=0, test_size=7500,
    ),
    DatasetSpec(
        "imagenet_r", "imagenet-rendition", "wnid_folders_200", 200,
        image_dir="imagenet-r", splits=_TEST_ONLY, label="ImageNet-R",
        train_size=0, test_size=30000,
    ),
    # Not one of the 15: the generated benchmark of `dplbench data synth` (synth.py).
    DatasetSpec(
        "synthetic", "synthetic", "split_json", 10,
        image_dir="images", split_file="split_zhou_Synthetic.json", benchmark=False,
    ),
]  # fmt: skip
for _spec in _SPECS:
    DATASETS.register(_spec.key, _spec)

# Table order of docs/protocols.md §1 (= registration order), the order reports list datasets in.
BENCHMARKS: tuple[str, ...] = tuple(s.key for s in _SPECS if s.benchmark)
# The folder holding the 1000 ImageNet class names that the variants fall back to.
IMAGENET_KEY = "imagenet"


def get_spec(key: str) -> DatasetSpec:
    """The spec of one dataset; unknown keys raise `DataError` listing the known ones."""
    if key not in DATASETS:
        raise DataError(f"unknown dataset {key!r}; choose from: {', '.join(DATASETS.names())}")
    return DATASETS.get(key)


def resolve_datasets(selection: str | list[str]) -> list[str]:
    """`"all"` -> the 15 benchmarks in table order; `"k1,k2"` or a list -> those keys, checked."""
    keys = selection.split(",") if isinstance(selection, str) else list(selection)
    keys = [k.strip() for k in keys if k.strip()]
    if keys == ["all"]:
        return list(BENCHMARKS)
    for key in keys:
        get_spec(key)
    if not keys:
        raise DataError("no dataset given; pass `all` or comma-separated keys")
    return keys


def label(key: str) -> str:
    """The display name of a dataset key (reports); unknown keys are shown as they are."""
    return (DATASETS.get(key).label or key) if key in DATASETS else key


def prompt_name(name: str) -> str:
    """Class names go into prompts with underscores replaced by spaces (docs/protocols.md §1)."""
    return name.replace("_", " ").strip()
