"""Classical baselines (logistic regression, random forest, SVM; CoxPH, Coxnet, random survival
forest) on the same splits and fitted features as the Lightning modes, writing the same predictions."""

from radfusion.baselines.estimators import BASELINES, CLASSIFIERS, SURVIVAL_MODELS, make_estimator
from radfusion.baselines.run import BaselineError, run_baseline

__all__ = ["BASELINES", "CLASSIFIERS", "SURVIVAL_MODELS", "BaselineError", "make_estimator", "run_baseline"]
