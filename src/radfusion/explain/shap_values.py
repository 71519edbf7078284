"""SHAP values of the radiomics input, their global importance tables and a beeswarm plot.

Which explainer (all from the ``shap`` package):

- tree ensembles (XGBoost, scikit-learn forests and boosting): ``shap.TreeExplainer`` (exact, the
  trees' own path-dependent expectation; output in the model's raw units: log-odds for XGBoost,
  probability for a random forest);
- linear classifiers with ``coef_`` (logistic regression): ``shap.LinearExplainer`` with an
  independent masker on the training background, i.e. exactly ``coef * (x - mean(background))`` in
  log-odds;
- anything else (the network's radiomics branch, SVM, survival models): ``shap.PermutationExplainer``
  on the model's output with an independent masker over ``n_background`` training rows and
  ``2·F + 1`` evaluations per subject (one forward and one backward pass through a permutation, which
  makes the values add up exactly to ``f(x) - E_background f``).

The background is always training rows: nothing about the held-out subjects enters an explanation
except their own values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.explain.groups import feature_groups

#: Output unit of each explainer, for ``shap_values.csv`` readers.
UNITS = {"tree": "raw tree output (log-odds for XGBoost, probability for forests)", "linear": "log-odds",
         "permutation": "model output (network: logit; classifier: P(y=1); survival: risk)"}


@dataclass
class ShapResult:
    """SHAP values of ``subjects`` (rows) × ``features`` (columns) and what produced them."""

    values: np.ndarray          # (n_subjects, n_features)
    base_values: np.ndarray     # (n_subjects,)
    data: np.ndarray            # (n_subjects, n_features) the explained inputs
    features: list[str]
    subjects: list[str]
    explainer: str              # tree | linear | permutation


def background_rows(X_train: np.ndarray, n_background: int, seed: int = 0) -> np.ndarray:
    """At most ``n_background`` training rows drawn without replacement (seeded)."""
    X_train = np.asarray(X_train, dtype=np.float64)
    if len(X_train) <= n_background:
        return X_train
    rng = np.random.default_rng(seed)
    return X_train[np.sort(rng.choice(len(X_train), n_background, replace=False))]


def tree_explainer(model):
    """``shap.TreeExplainer`` of an XGBoost / scikit-learn tree classifier, else None (e.g. a survival forest
    or a bagged SVM, which TreeExplainer cannot read: these get the permutation explainer)."""
    import shap
    from sklearn.base import is_classifier

    module = type(model).__module__
    if not (is_classifier(model) and module.startswith(("xgboost", "sklearn.ensemble", "sklearn.tree", "lightgbm"))):
        return None
    try:
        return shap.TreeExplainer(model)
    except Exception:  # noqa: BLE001 - "model type not yet supported" is an InvalidModelError or a TypeError
        return None


def _positive_column(values: np.ndarray, model) -> np.ndarray:
    """SHAP values of class 1 when an explainer returns one slice per class ``(n, F, n_classes)``."""
    if values.ndim == 3:
        classes = list(getattr(model, "classes_", [0, 1]))
        return values[:, :, classes.index(1) if 1 in classes else -1]
    return values


def explain_estimator(model, X_background: np.ndarray, X: np.ndarray, features: Sequence[str],
                      subjects: Sequence[str], predict: Callable[[np.ndarray], np.ndarray] | None = None,
                      seed: int = 0) -> ShapResult:
    """SHAP values of a fitted scikit-learn style model at ``X`` (see the module doc for the explainer).

    ``predict`` is the output a model-agnostic explainer explains (default: ``P(y=1)`` for classifiers,
    ``predict`` otherwise).
    """
    import shap

    X = np.asarray(X, dtype=np.float64)
    bg = np.asarray(X_background, dtype=np.float64)
    trees = tree_explainer(model)
    if trees is not None:
        explanation = trees(X, check_additivity=False)
        values, kind = _positive_column(np.asarray(explanation.values), model), "tree"
        base = np.asarray(explanation.base_values)
        base = base[:, -1] if base.ndim == 2 else base
    elif hasattr(model, "coef_") and hasattr(model, "predict_proba") and np.ndim(model.coef_) == 2 \
            and np.shape(model.coef_)[0] == 1:
        explanation = shap.LinearExplainer(model, shap.maskers.Independent(bg, max_samples=len(bg)))(X)
        values, base, kind = np.asarray(explanation.values), np.asarray(explanation.base_values), "linear"
    else:
        if predict is None:
            predict = _default_predict(model)
        return explain_function(predict, bg, X, features, subjects, seed=seed)
    return ShapResult(values, np.broadcast_to(base, (len(X),)).astype(np.float64), X, list(features),
                      list(subjects), kind)


def _default_predict(model) -> Callable[[np.ndarray], np.ndarray]:
    if hasattr(model, "predict_proba"):
        classes = list(model.classes_)
        return lambda Z: model.predict_proba(Z)[:, classes.index(1)]
    return lambda Z: np.asarray(model.predict(Z), dtype=np.float64)


def explain_function(f: Callable[[np.ndarray], np.ndarray], X_background: np.ndarray, X: np.ndarray,
                     features: Sequence[str], subjects: Sequence[str], seed: int = 0) -> ShapResult:
    """Permutation SHAP of any vectorised ``f: (n, F) -> (n,)`` at the rows of ``X``."""
    import shap

    X = np.asarray(X, dtype=np.float64)
    bg = np.asarray(X_background, dtype=np.float64)
    explainer = shap.PermutationExplainer(f, shap.maskers.Independent(bg, max_samples=len(bg)), seed=seed)
    explanation = explainer(X, max_evals=2 * X.shape[1] + 1, silent=True)
    return ShapResult(np.asarray(explanation.values, dtype=np.float64),
                      np.asarray(explanation.base_values, dtype=np.float64).reshape(len(X)), X, list(features),
                      list(subjects), "permutation")


def importance_tables(result: ShapResult) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(per feature, per group)`` global importance: mean |SHAP| over the explained subjects.

    The feature table has one row per feature with its parsed habitat / sequence / image type / class and
    ``rank`` (1 = most important). The group table sums the features' mean |SHAP| at four levels
    (``habitat``, ``sequence``, ``class`` and ``group`` = habitat × sequence × coarse class, e.g.
    ``ED × FLAIR texture``), with the number of features behind each row.
    """
    table = feature_groups(result.features)
    table["mean_abs_shap"] = np.abs(result.values).mean(axis=0) if len(result.values) else 0.0
    table["mean_shap"] = result.values.mean(axis=0) if len(result.values) else 0.0
    table = table.sort_values("mean_abs_shap", ascending=False, kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    parts = []
    for level, column in (("habitat", "habitat"), ("sequence", "sequence"), ("class", "coarse"), ("group", "group")):
        agg = table.groupby(column, sort=False).agg(mean_abs_shap=("mean_abs_shap", "sum"),
                                                    n_features=("name", "size")).reset_index()
        parts.append(agg.rename(columns={column: "name"}).assign(level=level))
    groups = pd.concat(parts, ignore_index=True)[["level", "name", "mean_abs_shap", "n_features"]]
    groups = groups.sort_values(["level", "mean_abs_shap"], ascending=[True, False], kind="stable")
    return table, groups.reset_index(drop=True)


def write_shap(result: ShapResult, out_dir: Path, prefix: str = "", title: str = "", max_display: int = 20) -> dict:
    """``<prefix>shap_values.csv`` (subjects × features), ``shap_importance.csv``, ``shap_groups.csv``
    and ``shap_beeswarm.png`` (all with ``prefix``); returns the top features for the run's summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(result.values, columns=result.features)
    frame.insert(0, "base_value", result.base_values)
    frame.insert(0, "subject_id", result.subjects)
    frame.to_csv(out_dir / f"{prefix}shap_values.csv", index=False)
    features, groups = importance_tables(result)
    features.to_csv(out_dir / f"{prefix}shap_importance.csv", index=False)
    groups.to_csv(out_dir / f"{prefix}shap_groups.csv", index=False)
    beeswarm(result, out_dir / f"{prefix}shap_beeswarm.png", title, max_display)
    top_groups = groups[groups.level == "group"].head(5)
    return {"explainer": result.explainer, "unit": UNITS[result.explainer], "n_subjects": len(result.subjects),
            "n_features": len(result.features), "top_features": features["name"].head(10).tolist(),
            "top_groups": top_groups["name"].tolist()}


def beeswarm(result: ShapResult, path: Path, title: str = "", max_display: int = 20) -> None:
    """shap's beeswarm of the ``max_display`` features with the largest mean |SHAP|."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import shap

    explanation = shap.Explanation(values=result.values, base_values=result.base_values, data=result.data,
                                   feature_names=result.features)
    fig = plt.figure(figsize=(10, 0.35 * min(max_display, len(result.features)) + 2))
    shap.plots.beeswarm(explanation, max_display=max_display, show=False, plot_size=None)
    plt.title(title or f"SHAP ({result.explainer}), {len(result.subjects)} subjects", fontsize=10)
    plt.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close("all")
