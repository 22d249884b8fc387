from dplbench.cli import main

main()
