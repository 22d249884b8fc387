"""GPU check for issue #2, run on a lent GPU machine (see README: benchmarks).

1. ViT-B-16 (random init) encoders equal open_clip's on the GPU in fp32 (allclose 1e-5 rule).
2. `bench_models` on ViT-B-16 and dpl-tiny, bf16 autocast: train step (batch 4) and eval
   throughput (batch 4 and 64), ratios to ivlp / zsclip, peak memory.
3. A profile of one dpl and one ivlp training step: kernel launches and the top CUDA ops.
Writes markdown to stdout and to $OUT/device_check.md when OUT is set.
"""

import logging
import os
import sys
import time

import torch

logging.disable(logging.WARNING)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from dpl.backbone import BackboneConfig, load_clip  # noqa: E402
from dpl.encoders import TextEncoder, VisionEncoder  # noqa: E402
from dplbench.bench.model import bench_models, ratio_table  # noqa: E402

out = []


def say(line=""):
    print(line, flush=True)
    out.append(line)


dev = torch.device("cuda")
say(f"# device check: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
t0 = time.time()
import open_clip  # noqa: E402

clip = load_clip(BackboneConfig(model="ViT-B-16", pretrained=None)).to(dev)
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    for p in clip.parameters():
        p.add_(torch.randn(p.shape, generator=g).to(dev) * 0.02)
    img = torch.randn(4, 3, 224, 224, generator=g).to(dev)
    tok = open_clip.get_tokenizer("ViT-B-16")(["a photo of a dog.", "x", "a red car at night"]).to(
        dev
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    v = (VisionEncoder(clip.visual)(img) - clip.encode_image(img)).abs().max().item()
    e, eot = TextEncoder(clip).embed(tok)
    t = (TextEncoder(clip)(e, eot) - clip.encode_text(tok)).abs().max().item()
say(f"equivalence fp32 on GPU: max |diff| image {v:.2e}, text {t:.2e} (rule: 1e-5)")
del clip
torch.cuda.empty_cache()


def table(rows, title):
    say(f"\n## {title}\n")
    say("| model | method | train ms | × ivlp | eval img/s | × zsclip | peak MiB |")
    say("|---|---|---|---|---|---|---|")
    for r in rows:
        f = lambda v, s: "-" if v is None else format(v, s)  # noqa: E731
        say(
            f"| {r['model']} | {r['method']} | {f(r['train_ms'], '.2f')} | "
            f"{f(r['train_vs_ivlp'], '.3f')} | {f(r['eval_img_s'], '.1f')} | "
            f"{f(r['eval_vs_zsclip'], '.3f')} | {f(r['peak_mib'], '.0f')} |"
        )


for eval_batch in (4, 64):
    rows = bench_models(
        ["ViT-B-16", "dpl-tiny"], batch=4, eval_batch=eval_batch, classes=50, steps=60, warmup=8
    )
    table(ratio_table(rows), f"bf16, train batch 4, eval batch {eval_batch}, 50 classes")

from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from dpl.methods import build_method, method_config  # noqa: E402
from dpl.optim import build_optimizer  # noqa: E402

clip = load_clip(BackboneConfig(model="ViT-B-16", pretrained=None)).to(dev)
images = torch.randn(4, 3, 224, 224, device=dev)
batch = {
    "image": images,
    "clean": images,
    "label": torch.arange(4, device=dev),
    "key": list("abcd"),
}
for name in ("ivlp", "dpl"):
    m = build_method(
        method_config(name, {"backbone": {"model": "ViT-B-16", "pretrained": None}}), clip
    ).to(dev)
    m.set_classes(list(IMAGENET_CLASSNAMES[:50]), "a photo of a {}.")
    opt = build_optimizer(m)
    m.train()

    def step(m=m, opt=opt):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = sum(m.losses(batch, 1, 20).values())
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    ev = prof.key_averages()
    kernels = sum(e.count for e in ev if e.device_type.name == "CUDA")
    cuda_us = sum(e.self_device_time_total for e in ev if e.device_type.name == "CUDA")
    say(f"\n## profile {name}: {kernels} CUDA kernels/step, {cuda_us / 1e3:.2f} ms CUDA time\n")
    say("```")
    say(ev.table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=50))
    say("```")
say(f"\nwall {time.time() - t0:.0f} s")
if os.environ.get("OUT"):
    with open(os.path.join(os.environ["OUT"], "device_check.md"), "w") as fh:
        fh.write("\n".join(out) + "\n")
