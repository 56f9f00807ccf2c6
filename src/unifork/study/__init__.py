"""The fork-point study: train the family fork 0 (task-specific) ... n_layers (fully shared), evaluate each."""

from unifork.study.run import run_study

__all__ = ["run_study"]
