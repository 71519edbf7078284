"""``run_baseline(model_cfg, dm)``: a classical model on the datamodule's splits and fitted features.

The model is the config's ``estimator`` block (a ``_target_``: any scikit-learn classifier for marker
baselines, any scikit-survival model for survival baselines; see :mod:`radfusion.baselines.estimators`).
The datamodule has already split the subjects and fitted the radiomics pipeline (imputation,
filtering, scaling) on the training subjects; baselines read ``dm.radiomics[split]`` and therefore
see exactly the features the Lightning modes see. Models are fitted on training rows with a known
label (markers) or known survival only. A hyperparameter grid, when configured, is chosen by the
validation split (AUC for markers, Harrell's C for survival), never by the test split.

With ``model.clinical`` set, the datamodule's fold-processed clinical covariates (``dm.clinical_inputs``,
fitted on the training subjects; :mod:`radfusion.features.clinical`) are appended to the radiomics columns.

The returned table has one row per subject of every split, in the same layout as the Lightning
runs' ``predictions.csv``::

    subject_id, split, fold, prob_<marker>, label_<marker>        (marker baselines)
    subject_id, split, fold, risk, os_days, os_event              (survival baselines)
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import ParameterGrid
from sksurv.metrics import concordance_index_censored
from sksurv.util import Surv

from radfusion.baselines.estimators import build_estimator, estimator_params, positive_probability, predicts_markers
from radfusion.data.splits import SPLITS

log = logging.getLogger(__name__)


class BaselineError(ValueError):
    """Data a baseline cannot be fitted on; the message names the marker/split/subjects."""


def _features(dm) -> dict[str, np.ndarray]:
    X = {}
    for split in SPLITS:
        ids = list(dm.splits[split])
        arr = np.asarray(dm.radiomics[split], dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] != len(ids):
            raise BaselineError(f"dm.radiomics[{split!r}] has shape {arr.shape}; expected ({len(ids)}, F) rows "
                                f"aligned with dm.splits[{split!r}]")
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            who = [ids[i] for i in np.flatnonzero(bad)[:5]]
            raise BaselineError(f"non-finite radiomics features for subject(s) {who} ({split} split) "
                                "after in-fold processing")
        X[split] = arr
    clinical = getattr(dm, "clinical_inputs", None)
    if clinical is not None:  # fitted on the training split by the datamodule, like the radiomics
        for split in SPLITS:
            extra = np.asarray(clinical[split], dtype=np.float64)
            if extra.shape[0] != X[split].shape[0]:
                raise BaselineError(f"dm.clinical_inputs[{split!r}] has {extra.shape[0]} rows, the features "
                                    f"{X[split].shape[0]}")
            X[split] = np.hstack([X[split], extra])
    widths = {a.shape[1] for a in X.values()}
    if len(widths) != 1:
        raise BaselineError(f"radiomics matrices of the splits have different widths {sorted(widths)}")
    return X


def _val_score(markers: bool, model: BaseEstimator, X: np.ndarray, y, **predict_kw) -> float | None:
    """Validation AUC / Harrell's C; None when undefined (e.g. no comparable pair)."""
    try:
        if markers:
            value = float(roc_auc_score(y, positive_probability(model, X)))
        else:
            value = float(concordance_index_censored(y["event"], y["time"], model.predict(X, **predict_kw))[0])
    except (ValueError, ZeroDivisionError):
        return None
    return value if np.isfinite(value) else None


def _val_usable(markers: bool, y) -> bool:
    if y is None or len(y) < 2:
        return False
    if markers:
        return len(np.unique(y)) == 2
    return int(np.sum(y["event"])) >= 1 and len(np.unique(y["time"])) > 1


def _fit_select(kind: str, cfg: dict, markers: bool, X_train, y_train, X_val, y_val, what: str):
    """Fit on train (each grid point if a grid is given) and keep the best validation score.

    ``kind`` names the baseline in messages; ``markers`` says whether the estimator is a classifier.
    With ``alpha_path: true`` (Coxnet) one fit holds a whole regularisation path (``alphas_``) and
    ``predict(X, alpha=...)`` scores any point on it: alpha is chosen along the path.
    Returns ``(model, chosen_params, scores, predict_kw)``; ``predict_kw`` carries that alpha.
    """
    spec = cfg["estimator"]
    params = estimator_params(spec)
    grid = {k: list(v) for k, v in (cfg.get("grid") or {}).items()}
    alpha_path = bool(cfg.get("alpha_path", False))
    usable = _val_usable(markers, y_val)
    if (grid or alpha_path) and not usable:
        log.warning("baseline %s (%s): the validation split cannot score a choice (too few labelled "
                    "subjects / classes / events); using the configured params without selection", kind, what)
        grid = {}
    points = list(ParameterGrid(grid)) if grid else [{}]
    best, scores = None, []
    for point in points:
        cand = {**params, **point}
        model = build_estimator(spec, **point)
        caught = _fit_quietly(model, X_train, y_train, kind, what)
        if caught is not None:  # a grid point that cannot be fitted (e.g. Cox diverges at small alpha)
            if len(points) == 1:
                raise caught
            scores.append({"params": _jsonable(cand), "score": None, "error": str(caught)})
            continue
        if alpha_path and usable:
            path = [float(a) for a in model.alphas_]
            path_scores = [_val_score(markers, model, X_val, y_val, alpha=a) for a in path]
            valid = [j for j, v in enumerate(path_scores) if v is not None]
            i = max(valid, key=lambda j: path_scores[j]) if valid else len(path) // 2
            kw, score = {"alpha": path[i]}, path_scores[i]
        elif alpha_path:
            alpha = cfg.get("alpha")
            kw, score = {"alpha": float(alpha) if alpha is not None else float(np.median(model.alphas_))}, None
        else:
            kw, score = {}, (_val_score(markers, model, X_val, y_val) if usable and len(points) > 1 else None)
        scores.append({"params": _jsonable({**cand, **kw}), "score": score})
        if best is None or (score is not None and (best[3] is None or score > best[3])):
            best = (model, {**cand, **kw}, kw, score)
    if best is None:
        raise BaselineError(f"baseline {kind} ({what}): no grid point could be fitted: {scores}")
    model, chosen, kw, _ = best
    if len(scores) > 1:
        log.info("baseline %s (%s): chose %s by validation %s", kind, what, _jsonable(chosen),
                 "AUC" if markers else "C-index")
    return model, _jsonable(chosen), scores, kw


def _fit_quietly(model, X, y, kind: str, what: str) -> Exception | None:
    """Fit, turning solver warnings into one summary line (sksurv and liblinear are chatty)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.fit(X, y)
        except (ArithmeticError, ValueError, np.linalg.LinAlgError) as err:
            return BaselineError(f"baseline {kind} ({what}) failed to fit: {err}")
    counts = Counter(str(w.message).splitlines()[0][:120] for w in caught
                     if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning)))
    for msg, n in counts.items():
        log.warning("baseline %s (%s): %d× %s", kind, what, n, msg)
    return None


def _jsonable(d: dict) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.items()}


def _index(dm) -> dict[str, int]:
    return {s: i for i, s in enumerate(dm.ids)}


def _marker_predictions(kind: str, cfg: dict, dm, X: dict, out: dict, info: dict) -> None:
    index = _index(dm)
    labels = np.asarray(dm.labels, dtype=np.float64).reshape(len(dm.ids), len(dm.targets))
    for t, marker in enumerate(dm.targets):
        y = {s: labels[[index[i] for i in dm.splits[s]], t] for s in SPLITS}
        bad = ~np.isnan(y["train"]) & ~np.isin(y["train"], (0.0, 1.0))
        if bad.any():
            raise BaselineError(f"marker {marker!r}: labels must be 0/1/NaN; train subject "
                                f"{dm.splits['train'][int(np.argmax(bad))]} has {y['train'][bad][0]}")
        known = ~np.isnan(y["train"])
        classes = np.unique(y["train"][known])
        if len(classes) < 2:
            raise BaselineError(
                f"marker {marker!r}: the train split has {int(known.sum())} labelled subjects, "
                f"{'all of class ' + str(int(classes[0])) if len(classes) else 'none'}; a classifier needs both "
                "classes. Add subjects, change data.split, or drop the marker from data.targets")
        vk = ~np.isnan(y["val"])
        model, chosen, scores, _ = _fit_select(
            kind, cfg, True, X["train"][known], y["train"][known].astype(int), X["val"][vk],
            y["val"][vk].astype(int), marker)
        info["chosen"][marker], info["val_scores"][marker] = chosen, scores
        info["n_train"][marker] = int(known.sum())
        info["_fitted"]["models"][marker] = model
        for s in SPLITS:
            out[s][f"prob_{marker}"] = positive_probability(model, X[s])
            out[s][f"label_{marker}"] = y[s]


def _survival_arrays(dm) -> tuple[np.ndarray, np.ndarray]:
    surv = dm.survival
    missing = [c for c in ("os_days", "os_event") if c not in surv.columns]
    if missing:
        raise BaselineError(f"dm.survival lacks column(s) {missing}")
    surv = surv.reindex(dm.ids)
    time, event = surv["os_days"].to_numpy(np.float64), surv["os_event"].to_numpy(np.float64)
    bad_t = np.flatnonzero(time <= 0)
    if len(bad_t):
        raise BaselineError(f"os_days must be > 0; subject(s) {[dm.ids[i] for i in bad_t[:5]]} have "
                            f"{time[bad_t[:5]].tolist()}")
    bad_e = np.flatnonzero(~np.isnan(event) & ~np.isin(event, (0.0, 1.0)))
    if len(bad_e):
        raise BaselineError(f"os_event must be 0 (censored) or 1 (death); subject(s) "
                            f"{[dm.ids[i] for i in bad_e[:5]]} have {event[bad_e[:5]].tolist()}")
    return time, event


def _survival_predictions(kind: str, cfg: dict, dm, X: dict, out: dict, info: dict) -> None:
    index = _index(dm)
    time, event = _survival_arrays(dm)
    rows = {s: np.array([index[i] for i in dm.splits[s]], dtype=int) for s in SPLITS}
    ys, known = {}, {}
    for s in SPLITS:
        k = np.isfinite(time[rows[s]]) & np.isfinite(event[rows[s]])
        known[s] = k
        ys[s] = Surv.from_arrays(event=event[rows[s]][k].astype(bool), time=time[rows[s]][k])
    n_ev = int(ys["train"]["event"].sum())
    if n_ev < 2:
        raise BaselineError(f"survival: the train split has {n_ev} event(s) among {int(known['train'].sum())} "
                            "subjects with survival data; at least 2 are needed (all-censored data cannot fit a "
                            "Cox model). Add subjects or change data.split")
    if n_ev == int(known["train"].sum()):
        log.warning("survival: every training subject has an event (no censoring)")
    model, chosen, scores, kw = _fit_select(kind, cfg, False, X["train"][known["train"]], ys["train"],
                                            X["val"][known["val"]], ys["val"], "survival")
    info["chosen"]["survival"], info["val_scores"]["survival"] = chosen, scores
    info["n_train"]["survival"], info["n_events_train"] = int(known["train"].sum()), n_ev
    info["_fitted"]["models"]["survival"] = model
    info["_fitted"]["predict_kw"] = _jsonable(dict(kw))
    for s in SPLITS:
        out[s]["risk"] = np.asarray(model.predict(X[s], **kw), dtype=np.float64)
        out[s]["os_days"], out[s]["os_event"] = time[rows[s]], event[rows[s]]


def run_baseline(model_cfg: dict, dm, fitted: dict | None = None) -> pd.DataFrame:
    """Fit one classical baseline and predict every subject of every split.

    Args:
        model_cfg: a ``configs/model/baseline_*.yaml`` block: ``{baseline: <name>, estimator: {_target_:
            <class or factory>, **kwargs} (a classifier → one model per marker; otherwise a survival
            model), grid: {param: [values]} (optional; chosen by validation AUC / C-index; values are
            set with ``set_params``), alpha_path: bool (Coxnet: choose alpha along the fitted path),
            alpha: float (used when the validation split cannot choose along the path)}``.
        fitted: when given, filled with ``{"models": {marker or "survival": estimator}, "predict_kw": {...}}``
            (what the model bundle saves, :mod:`radfusion.training.bundle`).
        dm: a set-up datamodule with ``ids, targets, labels (N, T), survival (DataFrame os_days,
            os_event), splits, radiomics (split -> (n_split, F)), fold``.

    Returns:
        The predictions table (see the module docstring). ``df.attrs["baseline"]`` holds the kind,
        the chosen hyperparameters and every validation score, for ``metrics.json``.

    Raises:
        BaselineError: a marker with one class in the train split, fewer than 2 training events,
            non-positive times, misaligned features — before anything is fitted for that target.
    """
    cfg = dict(model_cfg)
    kind = str(cfg.get("baseline") or "baseline")
    try:
        markers = predicts_markers(build_estimator(cfg.get("estimator")))
    except Exception as err:  # noqa: BLE001 - a bad block (no/unknown _target_, bad kwargs) is one clear error
        raise BaselineError(f"baseline {kind}: model.estimator must be a {{_target_: ...}} block of a "
                            f"scikit-learn / scikit-survival estimator (configs/model/baseline_*.yaml): {err}") from err
    X = _features(dm)
    out = {s: {"subject_id": list(dm.splits[s]), "split": s, "fold": int(getattr(dm, "fold", 0))} for s in SPLITS}
    info = {"kind": kind, "chosen": {}, "val_scores": {}, "n_train": {}, "n_features": int(X["train"].shape[1])}
    info["_fitted"] = fitted if fitted is not None else {}
    info["_fitted"].update(models={}, predict_kw={})
    if markers:
        if not list(dm.targets):
            raise BaselineError(f"baseline {kind} predicts markers but data.targets is empty; "
                                "use a survival baseline (coxph, coxnet, rsf) or set data.targets")
        _marker_predictions(kind, cfg, dm, X, out, info)
    else:
        _survival_predictions(kind, cfg, dm, X, out, info)
    table = pd.concat([pd.DataFrame(out[s]) for s in SPLITS], ignore_index=True)
    info.pop("_fitted")
    table.attrs["baseline"] = info
    return table
