"""The data layer: the 15 benchmarks, CoOp layout readers, WebDataset shards, protocols."""
