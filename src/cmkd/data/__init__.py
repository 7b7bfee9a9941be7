"""Datasets: sources, splits, normalisation and the Lightning data modules."""
