"""Evaluation: metrics and generation-based evaluation of a model on prompt datasets."""
