"""Batch prediction: a published model applied to a whole split, written as a CSV."""
