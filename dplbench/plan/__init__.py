"""What to run, pure and Ray-free: config layering, suites -> jobs, sweep spaces, ablations."""
