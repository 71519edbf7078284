"""Cohort reading, validation, synthetic data, preprocessing and the Lightning datamodule."""
