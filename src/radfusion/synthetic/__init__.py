"""The synthetic BraTS-like cohort, a toy nnU-Net model and fake run folders (tests, demos)."""
