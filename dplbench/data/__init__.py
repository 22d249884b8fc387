"""The data layer: the 15 benchmarks, CoOp layout readers, WebDataset shards, protocols.

    datasets.py     registry of the 15 (+ `synthetic`): folder, reader kind, template
    coop_layout.py  readers of $DATA in the CoOp layout, one per reader kind
    convert.py      $DATA -> shards (CLIP_benchmark layout + dplbench.json + index.parquet)
    protocols.py    few-shot (CoOp-exact), base/novel, long-tail rules
    fewshot.py      few-shot / long-tail selections written as small shard sets
    view.py         DatasetView: shards + classes + relabel + names + template of one split
    epochs.py       train_loader: exact epochs (a permutation per epoch, shared out by rank)
    shards.py       eval_loader: one exact pass split by rank and worker; all_reduce_counts
    transforms.py   CLIP train/test views, clean view, patch-wise RandAugment
    synth.py        synthetic benchmark and mini $DATA trees for tests
    verify.py       checks shards against their metadata
    tario.py, meta.py, images.py, parallel.py, progress.py, errors.py: helpers

The runner needs: `DatasetView.open(...)`, `train_loader(view, ...)`, `eval_loader(view, ...)`,
`all_reduce_counts(correct, total, ...)` and `ViewConfig`.
"""
