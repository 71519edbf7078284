"""The train pipeline called by the top-level ``train.py``."""
