"""`dplbench explain`: the recorded maps are the importance functions of open_clip's own attention
maps, Grad-CAM matches one computed on open_clip's own encode_image, and the command writes its
figures, table and arrays for a trained job (and fails in one line when it cannot)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny
from PIL import Image
from typer.testing import CliRunner

from dpl import importance as imp
from dpl.explain import gradcam, importance_maps, patch_grid
from dpl.methods import build_method, method_config
from dplbench.cli import app
from dplbench.results import store
from dplbench.results.root import ResultsRoot
from dplbench.run.prepare import ensure_synthetic

CLASSES = ["cat", "dog", "tree"]


def _model(name: str):
    model = build_method(method_config(name, tiny())).eval()
    model.set_classes(CLASSES)
    return model


class _Recorder:
    """A layer hook that keeps each layer's output and changes nothing."""

    def __init__(self):
        self.x = {}

    def wants_attention(self, modality, layer):
        return False

    def __call__(self, x, attn, modality, layer, layout):
        self.x[(modality, layer)] = (x, layout)
        return x


def _ln1_inputs(blocks):
    """Forward hooks keeping each block's normalised input (what its attention sees)."""
    kept, handles = {}, []
    for i, blk in enumerate(blocks):
        handles.append(
            blk.ln_1.register_forward_hook(lambda m, a, out, i=i: kept.__setitem__(i, out))
        )
    return kept, handles


def _reference_attention(blk, h, mask=None):
    # open_clip's own nn.MultiheadAttention, asked for its per-head weights
    return blk.attn(h, h, h, attn_mask=mask, need_weights=True, average_attn_weights=False)[1]


@torch.no_grad()
def test_recorded_maps_are_the_importance_functions_of_open_clips_attention():
    model = _model("dpl")
    cfg = model.cfg.iwtd
    images = torch.randn(2, 3, 32, 32)
    layers = [0, 1]
    maps = importance_maps(model, images, layers, layers, torch.Generator().manual_seed(0))
    assert [(m.modality, m.layer) for m in maps] == [
        ("vision", 0), ("vision", 1), ("text", 0), ("text", 1)
    ]  # fmt: skip

    # The reference forward: plain (fused) attention, outputs and normalised inputs recorded.
    rec = _Recorder()
    vis_blocks = model.clip.visual.transformer.resblocks
    txt_blocks = model.clip.transformer.resblocks
    h_vis, hv = _ln1_inputs(vis_blocks)
    model.image_features(images, rec)
    for h in hv:
        h.remove()
    h_txt, ht = _ln1_inputs(txt_blocks)
    cs = model.classes
    model.text(cs.embedded, cs.eot, [p[0] for p in model._text_prompt_list()], 1, rec)
    for h in ht:
        h.remove()
    L = cs.embedded.shape[1]
    for m in maps:
        x, layout = rec.x[(m.modality, m.layer)]
        if m.modality == "vision":
            attn = _reference_attention(vis_blocks[m.layer], h_vis[m.layer])
        else:
            mask = model.clip.attn_mask[:L, :L]
            attn = _reference_attention(txt_blocks[m.layer], h_txt[m.layer], mask)
        content = layout.content
        expect = {
            "cls": imp.cls_score(attn, layout.global_index, content),
            "self": imp.self_score(attn, content),
            "cross": imp.cross_score(model.mag.attend(x, m.modality, layout.valid), content),
        }
        assert set(m.scores) == set(expect) and m.used == cfg.importance
        for k, v in expect.items():
            torch.testing.assert_close(m.scores[k], v, atol=2e-5, rtol=1e-4)
            # each score: a distribution over the content tokens
            assert (m.scores[k] >= 0).all() and not m.scores[k][~content].any()
            torch.testing.assert_close(m.scores[k].sum(-1), torch.ones(len(content)))
        importance = imp.combine([expect[k] for k in cfg.importance])
        torch.testing.assert_close(m.importance, importance, atol=2e-5, rtol=1e-4)
        p_expect = imp.drop_probability(m.importance, content, cfg.p_min, cfg.p_max)
        torch.testing.assert_close(m.p, p_expect)
        on = m.p[content]
        assert on.min() >= cfg.p_min - 1e-6 and on.max() <= cfg.p_max + 1e-6
        assert not m.p[~content].any()
        # one draw: only droppable tokens, never one with p = 0
        assert not (m.mask & ~layout.target).any() and not (m.mask & (m.p == 0)).any()


def test_probe_changes_nothing_and_restores_the_mode():
    model = _model("dpl")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model.logits(images)
    model.train()
    importance_maps(model, images, [0, 1], [0], torch.Generator().manual_seed(1))
    assert model.training
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.logits(images), before)


def test_gradcam_matches_open_clips_encode_image():
    model = _model("zsclip")
    images = torch.randn(3, 3, 32, 32)
    cam, pred = gradcam(model, images)
    gh, gw = patch_grid(model)
    assert cam.shape == (3, gh, gw) and (cam >= 0).all() and (cam <= 1).all()

    # Reference: open_clip's encode_image against the frozen class features, Grad-CAM by hand.
    clip = model.clip
    kept = {}
    h = clip.visual.transformer.resblocks[-1].ln_1.register_forward_hook(
        lambda m, a, out: kept.__setitem__("a", out)
    )
    x = images.clone().requires_grad_(True)
    f = F.normalize(clip.encode_image(x), dim=-1)
    h.remove()
    logits = clip.logit_scale.exp() * f @ model.classes.frozen_text.T
    ref_pred = logits.argmax(-1)
    (grad,) = torch.autograd.grad(logits.gather(1, ref_pred[:, None]).sum(), kept["a"])
    a, g = kept["a"][:, 1:].detach(), grad[:, 1:]
    ref = torch.relu((a * g.mean(1, keepdim=True)).sum(-1))
    ref = ref / ref.amax(-1, keepdim=True)
    assert torch.equal(pred, ref_pred)
    torch.testing.assert_close(cam, ref.view(3, gh, gw), atol=1e-4, rtol=1e-3)
    assert all(p.grad is None for p in model.parameters())  # nothing left behind


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny dpl job trained for one epoch on the synthetic benchmark (no Ray)."""
    root = tmp_path_factory.mktemp("explain")
    shards, res = str(root / "shards"), str(root / "results")
    ensure_synthetic(shards)
    r = CliRunner().invoke(
        app,
        ["run", "--methods", "dpl", "--data", shards, "--results", res, "--no-ray",
         "--loader-workers", "0", "optim.epochs=1"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    job = (
        store.query(ResultsRoot(res), "SELECT DISTINCT job_id FROM rows")
        .column("job_id")
        .to_pylist()
    )
    return shards, res, job[0]


def _explain(*args):
    return CliRunner().invoke(app, ["explain", *args])


def test_explain_a_trained_job_writes_figures_table_and_arrays(trained, tmp_path):
    shards, res, job = trained
    out = tmp_path / "out"
    args = ["--data", shards, "--results", res, "--images", "2", "--out", str(out)]
    r = _explain("--job", job, "--layers", "0,1", *args)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == [
        "image_00.png", "image_01.png", "maps.npz", "text_tokens.md"
    ]  # fmt: skip
    for png in ("image_00.png", "image_01.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.width > 600 and im.height > 400
    a = np.load(out / "maps.npz", allow_pickle=False)
    assert a["layers"].tolist() == [0, 1]
    for key in ("s_cls", "s_self", "s_cross", "importance", "p", "mask"):
        assert a[key].shape == (2, 2, 4, 4), key  # images, layers, the tiny ViT's 4x4 grid
    assert ((a["p"] >= 0.1 - 1e-6) & (a["p"] <= 0.5 + 1e-6)).all()
    assert a["images"].shape == (2, 32, 32, 3) and a["images"].dtype == np.uint8
    assert len(set(a["labels"].tolist())) == 2  # distinct classes first
    for key in ("gradcam_method", "gradcam_zsclip"):
        assert a[key].shape == (2, 4, 4) and a[key].min() >= 0 and a[key].max() <= 1
    table = (out / "text_tokens.md").read_text()
    assert "| layer | pos | token | droppable |" in table and "[ctx 1]" in table

    # The job's trained prompts are what is explained: the untrained method (same seed,
    # same recipe) gives other text maps.
    untrained = tmp_path / "untrained"
    r = _explain(
        "--method", "dpl", "--dataset", "synthetic", "--layers", "0,1", "--images", "2",
        "--data", shards, "--results", res, "--out", str(untrained),
        "backbone.model=dpl-tiny", "backbone.pretrained=null",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    b = np.load(untrained / "maps.npz", allow_pickle=False)
    assert a["s_cls"].shape == b["s_cls"].shape and not np.allclose(a["s_cls"], b["s_cls"])


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--job", "0123456789abcdef"], "no result rows for job 0123456789abcdef"),
        (["--method", "dpl"], "--method needs --dataset"),
        (["--job", "x", "--method", "dpl"], "give --job JOB_ID (a trained job) or --method"),
        (["--method", "dpl", "--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["--layers", "0,9"], "--layers 9: the vision tower has layers 0..3"),
    ],
)
def test_bad_input_is_one_line(trained, tmp_path, args, expect):
    shards, res, job = trained
    if args[0] == "--layers":
        args = ["--job", job, *args]
    r = _explain(*args, "--data", shards, "--results", res, "--out", str(tmp_path / "o"))
    assert r.exit_code == 2, r.output
    assert expect in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_missing_trained_prompts_say_how_to_fix(trained, tmp_path):
    shards, res, job = trained
    from pathlib import Path

    state = Path(res) / "checkpoints" / job / "final.pt"
    moved = state.with_suffix(".bak")
    state.rename(moved)
    try:
        r = _explain("--job", job, "--data", shards, "--results", res)
    finally:
        moved.rename(state)
    assert r.exit_code == 2
    assert f"uses the prompts of job {job}, but" in r.output and "--resume" in r.output


def test_explain_an_llm_source_method_labels_its_llm_tokens(tmp_path, trained):
    from conftest import tiny_llm, tiny_llm_cache

    shards = trained[0]
    out = tmp_path / "llm"
    r = _explain(
        "--method", "dpl-release", "--dataset", "synthetic", "--layers", "0,1", "--images", "1",
        "--data", shards, "--results", str(tmp_path / "r"), "--out", str(out),
        "backbone.model=dpl-tiny", "backbone.pretrained=null", f"llm.cache={tiny_llm_cache()}",
        f"llm.model={tiny_llm()}",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    table = (out / "text_tokens.md").read_text()
    rows = [line.split("|") for line in table.splitlines() if "[llm " in line]
    assert len(rows) == 2 * 24  # 24 LLM tokens (dpl-release) per chosen text layer
    assert all(row[4].strip() == "yes" for row in rows)  # IWTD may drop every LLM token
