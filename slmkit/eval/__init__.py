"""Evaluation: metrics over model predictions."""
