"""Metrics and run comparison read from ``predictions.csv`` files."""
