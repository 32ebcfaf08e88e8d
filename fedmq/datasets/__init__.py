"""Synthetic data sets for examples, tests and simulations (pure numpy)."""
