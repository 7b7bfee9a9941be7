"""Backbones and the common model output record."""
