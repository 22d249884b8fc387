"""`dplbench llm import`: a release's own knowledge files (LLaMP's format, written here small for
the tiny LLM) become a cache whose rows are the files' rows in the dataset's class order, whose
teacher is the files' text features, and that a `llamp` job trains on; anything else in such a
file is refused in one line."""

import json
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from dpl.methods import build_method
from dplbench.cli import app
from dplbench.data.meta import load_meta
from dplbench.llm.recipes import llm_templates
from dplbench.plan.methods import resolve_method
from dplbench.results import store
from dplbench.results.root import ResultsRoot
from dplbench.run.prepare import ensure_synthetic
from tests.conftest import tiny, tiny_llm

KV_HEADS, HEAD_DIM, CLIP_WIDTH = 2, 16, 32  # the tiny LLM's last layer; dpl-tiny's embed_dim


def _release_files(folder, n_classes: int, seed: int = 0):
    """LLaMP's two files as its tool and model write/read them (tools/run_inference_chat.py
    :170-180: [layers, 2, C, kv_heads, S, hd] per template; models/llamp.py:134-143)."""
    g = torch.Generator().manual_seed(seed)
    m = math.ceil(n_classes / 2)
    sizes = {"base": m, "new": n_classes - m}
    lengths = {"base": 9, "new": 7}  # the splits' own sequence lengths
    pkv = {}
    for split, c in sizes.items():
        s = lengths[split]
        items = []
        for _ in llm_templates("synthetic"):
            mask = torch.ones(c, s, dtype=torch.long)
            mask[0, :2] = 0  # left padding of the first class's prompt
            items.append({
                "past_key_values": torch.randn(2, 2, c, KV_HEADS, s, HEAD_DIM, generator=g),
                "attn_mask": mask,
                "text_predictions": [f"a {split} thing with long leaves {i}" for i in range(c)],
            })  # fmt: skip
        pkv[split] = items
    emb = {
        "base": {"avg": torch.randn(sizes["base"], CLIP_WIDTH, generator=g)},
        "new": torch.randn(sizes["new"], CLIP_WIDTH, generator=g),  # LLaMP reads both forms
    }
    torch.save(pkv, folder / "release_past_key_value.pt")
    torch.save(emb, folder / "release_clip_text_embeddings.pt")
    return pkv, emb


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("import")
    shards = tmp / "shards"
    ensure_synthetic(str(shards))
    classnames = [n.replace("_", " ") for n in load_meta(str(shards), "synthetic").classnames]
    pkv, emb = _release_files(tmp, len(classnames))
    from dplbench.llm.phrases import write_standin_pipeline

    phrases = write_standin_pipeline(str(tmp / "phrases"))
    out = tmp / "cache"
    r = CliRunner().invoke(app, [
        "llm", "import", "--model", tiny_llm(), "--dataset", "synthetic", "--data", str(shards),
        "--past-key-values", str(tmp / "release_past_key_value.pt"),
        "--text-embeddings", str(tmp / "release_clip_text_embeddings.pt"),
        "--out", str(out), "--phrases", f"spacy:{phrases}", "--dtype", "fp32",
    ])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "recipe llamp-release-files" in r.stdout
    return tmp, shards, classnames, pkv, emb, out


def test_the_cache_holds_the_files_rows_in_the_datasets_class_order(imported):
    tmp, _, classnames, pkv, _, out = imported
    from safetensors.torch import load_file

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"] == "llamp-release-files"
    entry = manifest["datasets"]["synthetic"]
    assert entry["classes"] == classnames and "release_past_key_value" not in json.dumps(manifest)
    tensors = load_file(str(out / entry["file"]))
    m = math.ceil(len(classnames) / 2)
    for t in range(len(llm_templates("synthetic"))):
        for c, (split, i) in enumerate([("base", i) for i in range(m)]
                                       + [("new", i) for i in range(len(classnames) - m)]):  # fmt: skip
            kv, mask = pkv[split][t]["past_key_values"], pkv[split][t]["attn_mask"]
            s = kv.shape[4]
            torch.testing.assert_close(tensors["keys"][t, c, :, :s], kv[-1, 0, i])
            torch.testing.assert_close(tensors["values"][t, c, :, :s], kv[-1, 1, i])
            assert tensors["mask"][t, c, :s].tolist() == mask[i].tolist()
            assert not tensors["mask"][t, c, s:].any()  # the shorter split's padding: masked
    texts = json.loads((out / "synthetic.json").read_text())
    assert texts[0]["descriptions"][m] == "a new thing with long leaves 0"
    assert texts[0]["chunks"][m] == ["thing", "with", "long", "leaves"]  # the stand-in's nouns


def test_a_llamp_job_trains_on_the_imported_knowledge_and_its_teacher(imported):
    tmp, shards, classnames, _, emb, out = imported
    cfg = resolve_method(
        "llamp", tiny({"llm": {"cache": str(out), "model": tiny_llm()}}), protocol="base2novel"
    )
    model = build_method(cfg)
    m = math.ceil(len(classnames) / 2)
    model.set_classes(classnames[m:], "a photo of a {}.", "synthetic")  # the novel classes
    torch.testing.assert_close(model.classes.frozen_text, F.normalize(emb["new"], dim=-1))
    res = tmp / "results"
    r = CliRunner().invoke(app, [
        "run", "--suite", "smoke", "--methods", "llamp", "--no-ray", "--loader-workers", "0",
        "--data", str(shards), "--results", str(res), "--llm-cache", str(out),
        f"llm.model={tiny_llm()}", "optim.epochs=1",
    ])  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = store.query(ResultsRoot(res), "SELECT config, subsample FROM results").to_pylist()
    assert {r["subsample"] for r in rows} == {"base", "novel"}
    plan = CliRunner().invoke(app, [
        "run", "--suite", "smoke", "--methods", "llamp", "--dry-run", "--format", "json",
        "--llm-cache", str(out), f"llm.model={tiny_llm()}", "optim.epochs=1",
    ])  # fmt: skip
    (job,) = [json.loads(line) for line in plan.stdout.splitlines()]
    assert job["llm"]["recipe"] == "llamp-release-files"
    assert len(job["llm"]["datasets"]["synthetic"]["source_sha256"]["past_key_values"]) == 64


class _Code:
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (lambda: pickle.dumps({"base": _Code()}), "not the release's past-key-value file as a "
         "weights-only file"),
        (lambda: b"\x80\x04trunc", "not the release's past-key-value file as a weights-only file"),
        (lambda: None, "not the release's past-key-value file format: a dict with 'base'"),
    ],
)  # fmt: skip
def test_anything_else_is_refused_in_one_line_and_nothing_is_written(
    imported, tmp_path, content, expect
):
    _, shards, _, pkv, _, _ = imported
    bad = tmp_path / "release_past_key_value.pt"
    data = content()
    if data is None:
        torch.save({"base": pkv["base"]}, bad)  # no "new"
    else:
        bad.write_bytes(data)
    r = CliRunner().invoke(app, [
        "llm", "import", "--model", tiny_llm(), "--dataset", "synthetic", "--data", str(shards),
        "--past-key-values", str(bad), "--out", str(tmp_path / "cache"), "--phrases", "none",
    ])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert expect in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "this ran" not in r.output and not (tmp_path / "cache").exists()


def test_files_of_another_split_size_are_refused(imported, tmp_path):
    _, shards, classnames, pkv, _, _ = imported
    short = {"base": [dict(i, past_key_values=i["past_key_values"][:, :, :-1],
                           attn_mask=i["attn_mask"][:-1], text_predictions=i["text_predictions"][:-1])
                      for i in pkv["base"]], "new": pkv["new"]}  # fmt: skip
    torch.save(short, tmp_path / "f.pt")
    r = CliRunner().invoke(app, [
        "llm", "import", "--model", tiny_llm(), "--dataset", "synthetic", "--data", str(shards),
        "--past-key-values", str(tmp_path / "f.pt"), "--out", str(tmp_path / "c"), "--phrases", "none",
    ])  # fmt: skip
    assert r.exit_code == 2
    m = math.ceil(len(classnames) / 2)
    assert f"base holds {m - 1} classes, synthetic's base split has {m}" in r.stderr
