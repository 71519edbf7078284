"""Apply a trained model bundle to a new cohort (``predict.py``): :func:`radfusion.inference.predict.predict`."""
