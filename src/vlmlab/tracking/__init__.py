"""Experiment tracking in MLflow: one parent run per curriculum, one child run per stage."""
