"""How it runs: the per-worker train/eval loop (no Ray) and the one Ray launcher."""
