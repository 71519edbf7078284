"""Habitat radiomics with PyRadiomics."""
