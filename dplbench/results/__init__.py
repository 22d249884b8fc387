"""What runs produced: the Parquet store, aggregation, reports, sweep and ablation tables."""
