"""Imaging stage: preprocessing (resample, z-score in the brain), ROI tensors, augmentation."""
