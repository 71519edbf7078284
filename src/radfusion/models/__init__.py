"""Encoders, radiomics branch, fusion and the LightningModule."""
