"""Segmentation stage: trained nnU-Net v2 models applied to cohorts, and the quality of their masks.

- :mod:`~radfusion.segmentation.labels`: model channels → cohort sequences, model labels → cohort convention;
- :mod:`~radfusion.segmentation.nnunet`: :class:`NNUNetSegmenter` (nnU-Net's predictor, checks, provenance);
- :mod:`~radfusion.segmentation.run`: segment the subjects without masks, write masks + manifest
  (``scripts/segment.py``);
- :mod:`~radfusion.segmentation.quality`: Dice per habitat and feature change per family
  (``scripts/segmentation_quality.py``);
- :mod:`~radfusion.synthetic.toy_nnunet`: a tiny nnU-Net-format model trained in seconds (tests, demos).
"""
