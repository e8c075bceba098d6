"""Datasets, splits, the sequential ranker, its training and evaluation (imports neither inference nor streaming)."""
