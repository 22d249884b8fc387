"""How it runs: `execute(plan, request)` (run/executor.py) and what it drives: the one Ray
launcher (launcher.py), the workers (worker.py, train_loop.py), leases, tracking."""

from dplbench.run.executor import Execution, execute

__all__ = ["Execution", "execute"]
