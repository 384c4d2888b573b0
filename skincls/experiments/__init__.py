"""Experiments: procedures built from training and evaluation (cross-validation, ensembles)."""
