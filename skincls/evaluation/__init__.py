"""Evaluation: metrics on a named split, calibration, threshold choice, reports, plots and model cards."""
