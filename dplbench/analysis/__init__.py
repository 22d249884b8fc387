"""Analyses of trained models beyond the result tables (`dplbench explain`)."""
