from dplbench.cli import app

app()
