"""clip_lora: LoRA as CLIP-LoRA's release builds it, merged eval equal to the training path, the
frozen branch untouched, its step-budget schedule, and a short run that stops at its budget."""

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from dpl.lora import AttentionLoRA
from dpl.methods import build_method, method_config
from dplbench.cli import app
from dplbench.plan.methods import resolve_method
from dplbench.results import store
from dplbench.results.root import ResultsRoot
from dplbench.run.prepare import ensure_synthetic
from tests.conftest import tiny


@pytest.mark.slow
def test_vit_b16_has_the_release_trainable_count():
    # the release's count for ViT-B/16, r=2, q/k/v, both towers: 12 x 3 x 2 x (512 x 2) text
    # + 12 x 3 x 2 x (768 x 2) vision = 184,320
    m = build_method(method_config("clip_lora", {"backbone": {"pretrained": None}}))
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 184_320
    assert next(iter(m.text.lora.values())).scale == pytest.approx(1 / 2**0.5)


def test_merged_eval_equals_the_training_path_and_the_frozen_branch_is_clip():
    m = build_method(method_config("clip_lora", tiny({"lora": {"dropout": 0.0}})))
    m.set_classes(["dog", "cat", "car"], "a photo of a {}.")
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
    images = torch.randn(3, 3, 32, 32)
    m.train()
    with torch.no_grad():
        train_logits = m.logits(images)
    m.eval()
    eval_logits = m.logits(images)  # q/k/v deltas merged into the packed weights
    torch.testing.assert_close(eval_logits, train_logits, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        clip = F.normalize(m.clip.encode_image(images), dim=-1)
    torch.testing.assert_close(m.frozen_image_features(images), clip, rtol=1e-5, atol=1e-5)
    assert (F.normalize(m.image_features(images), dim=-1) - clip).abs().max() > 1e-3


def test_out_projection_lora_merges_too():
    lora = AttentionLoRA(16, rank=2, alpha=1.0, dropout=0.0, targets=("q", "o"))
    with torch.no_grad():
        lora.b.normal_()
    out = torch.randn(2, 5, 16)
    w = torch.randn(16, 16)
    merged = F.linear(out, lora.merged_out(w)[0])  # [K=1, D, D]: one member's
    torch.testing.assert_close(merged, F.linear(out, w) + lora.delta_out(out, None))


def test_cosine_iterations_schedule_is_the_release_cosine_annealing():
    from dpl.schedules import group_lr

    cfg = resolve_method("clip_lora", protocol="fewshot", dataset="dtd", shots=1).optim
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=2e-4)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=500, eta_min=1e-6)
    steps_per_epoch = 3
    for t in range(500):
        epoch, step = divmod(t, steps_per_epoch)
        assert group_lr(cfg, "lora", epoch, step, steps_per_epoch) == pytest.approx(
            opt.param_groups[0]["lr"], rel=1e-9
        )
        opt.step()
        ref.step()


def test_a_short_run_stops_at_its_step_budget(tmp_path):
    shards = tmp_path / "shards"
    ensure_synthetic(str(shards))
    res = tmp_path / "r"
    args = ["run", "--suite", "smoke", "--methods", "clip_lora", "--data", str(shards), "--no-ray"]
    args += ["--results", str(res), "--loader-workers", "0", "optim.iterations=7"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    epochs = store.query(
        ResultsRoot(res), "SELECT epoch, samples FROM epochs ORDER BY epoch"
    ).to_pylist()
    # 5 base classes x 8 shots = 40 samples, batch 8 (smoke): 5 steps per epoch -> 5 + 2 steps
    assert [e["samples"] for e in epochs] == [40, 16]
