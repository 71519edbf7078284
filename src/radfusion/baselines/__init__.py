"""Classical baselines (logistic regression, random forest, SVM; CoxPH, Coxnet, random survival
forest) on the same splits and fitted features as the Lightning modes, writing the same predictions.
Each is a ``configs/model/baseline_*.yaml`` whose ``estimator`` is a ``_target_`` block."""

from radfusion.baselines.estimators import CalibratedSVC, RidgeCoxPH, build_estimator
from radfusion.baselines.run import BaselineError, run_baseline

__all__ = ["BaselineError", "CalibratedSVC", "RidgeCoxPH", "build_estimator", "run_baseline"]
