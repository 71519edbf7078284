"""Cohort stage: read any supported layout, parse clinical values, validate once, habitats."""
