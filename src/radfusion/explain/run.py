"""``explain=true``: explanations of a finished run, written into ``<run>/explain/``.

Called by :func:`radfusion.training.run.train` after ``predictions.csv`` is written, for networks
(:func:`explain_network`) and classical baselines (:func:`explain_baseline`). Settings
(``explanation:`` in ``configs/train.yaml``)::

    subjects: null      # ids for the saliency maps; null = n_per_class test subjects of each class
    n_per_class: 2
    n_background: 50    # training rows of the SHAP background
    ig_steps: 32        # integrated-gradients steps
    shap_splits: [val, test]   # whose SHAP values are computed (global importance = their mean |SHAP|)

Files (``docs/explain.md``): ``shap_values.csv``, ``shap_importance.csv``, ``shap_groups.csv``,
``shap_beeswarm.png`` (one set per head, prefixed ``<head>_`` when there are several), ``saliency/``
(``<id>_ig.nii.gz``, ``<id>_roi.nii.gz``, ``<id>_mask.nii.gz``, ``<id>.png``, ``saliency.csv``),
``fusion_weights.csv``, ``branch_contributions.csv`` + ``branch_contributions_by_class.csv`` and
``explain.json`` (explainers, units, top features, seconds per step and per subject).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from radfusion.data.splits import SPLITS
from radfusion.explain.branches import branch_contributions, forward_logits, fusion_weights, model_inputs, unfrozen
from radfusion.explain.saliency import integrated_gradients, mask_share, overlay_png, roi_mask, save_nifti
from radfusion.explain.shap_values import (
    ShapResult,
    background_rows,
    explain_estimator,
    explain_function,
    write_shap,
)

log = logging.getLogger(__name__)

DEFAULTS = {"subjects": None, "n_per_class": 2, "n_background": 50, "ig_steps": 32, "shap_splits": ["val", "test"],
            "seed": 0}


def explain_settings(cfg: Mapping | None) -> dict:
    """``explanation:`` with defaults; unknown keys are an error naming the known ones."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"explanation: unknown key(s) {unknown}; known: {sorted(DEFAULTS)}")
    out = {**DEFAULTS, **cfg}
    bad = [s for s in out["shap_splits"] if s not in SPLITS]
    if bad:
        raise ValueError(f"explanation.shap_splits: {bad} are not splits; choose from {list(SPLITS)}")
    return out


def _heads(dm) -> list[str]:
    return [*dm.targets, *(["survival"] if getattr(dm, "survival_target", False) else [])]


def _baseline_matrices(dm, splits) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """``(feature names, training rows, explained rows, their ids)`` as the baselines see them: the
    fold-processed radiomics, then the fold-processed clinical inputs when the run has them."""
    names = list(getattr(getattr(dm, "feature_pipeline", None), "feature_names_out_", []) or [])
    clinical = getattr(dm, "clinical_inputs", None)
    if clinical is not None:
        pipe = getattr(dm, "clinical_pipeline", None)
        width = np.asarray(clinical["train"]).shape[1]
        names += [f"clinical:{n}" for n in (getattr(pipe, "feature_names_out_", None) or range(width))]

    def matrix(split: str) -> np.ndarray:
        parts = [np.asarray(dm.radiomics[split], dtype=np.float64)] if getattr(dm, "radiomics", None) else []
        if clinical is not None:
            parts.append(np.asarray(clinical[split], dtype=np.float64))
        return np.hstack(parts)

    X_train = matrix("train")
    names = names if len(names) == X_train.shape[1] else [f"f{i}" for i in range(X_train.shape[1])]
    ids = [sid for split in splits for sid in dm.splits[split]]
    X = np.concatenate([matrix(split) for split in splits])
    return names, X_train, X, ids


def _write_json(out: Path, summary: dict) -> None:
    (out / "explain.json").write_text(json.dumps(summary, indent=2, default=str))


# ---------------------------------------------------------------------------------------------- baselines
def explain_baseline(settings: Mapping | None, dm, fitted: Mapping, out_dir: Path) -> dict:
    """SHAP of a fitted baseline per head on ``shap_splits``; ``fitted`` is what
    :func:`radfusion.baselines.run_baseline` fills: ``{"models": {marker or "survival": estimator},
    "predict_kw": {...}}`` (the survival model's ``predict`` keywords, e.g. Coxnet's alpha). The features
    are the baseline's: the radiomics columns, then the clinical ones when ``model.clinical`` is set."""
    s = explain_settings(settings)
    out = Path(out_dir) / "explain"
    out.mkdir(parents=True, exist_ok=True)
    names, X_train, X, ids = _baseline_matrices(dm, s["shap_splits"])
    bg = background_rows(X_train, s["n_background"], s["seed"])
    summary = {"kind": "baseline", "settings": s, "heads": {}}
    models = dict(fitted.get("models", {}))
    heads = list(models)
    for head in heads:
        t0 = time.perf_counter()
        model, kw = models[head], (dict(fitted.get("predict_kw") or {}) if head == "survival" else {})
        predict = (lambda Z, m=model, k=kw: np.asarray(m.predict(Z, **k), dtype=np.float64)) if kw else None
        result = explain_estimator(model, bg, X, names, ids, predict=predict, seed=s["seed"])
        prefix = f"{head}_" if len(heads) > 1 else ""
        info = write_shap(result, out, prefix, f"{head}: SHAP of {type(model).__name__} ({result.explainer})")
        seconds = time.perf_counter() - t0
        summary["heads"][head] = {**info, "seconds": round(seconds, 3),
                                  "seconds_per_subject": round(seconds / max(len(ids), 1), 4)}
    _write_json(out, summary)
    log.info("explanations in %s", out)
    return summary


# ---------------------------------------------------------------------------------------------- networks
def _collect(net, dm, splits) -> dict:
    """Per split: ids, branch inputs, encoder embeddings, outputs and fusion weights (one pass)."""
    res = {}
    for split in splits:
        parts: dict[str, list] = {"ids": [], "labels": [], "emb": [], "logits": [], "weights": []}
        inputs: dict[str, list] = {}
        for batch in dm.split_dataloader(split):
            labels = batch["labels"].numpy().copy()
            labels[batch["label_mask"].numpy() == 0] = np.nan
            parts["ids"] += list(batch["subject_id"])
            parts["labels"].append(labels)
            x = model_inputs(batch)
            for k, v in x.items():
                inputs.setdefault(k, []).append(v)
            with torch.no_grad():
                emb = net.encoder(batch["image"].float()) if getattr(net, "uses_images", False) else None
                logits = forward_logits(net, x, emb, len(batch["subject_id"]))
            parts["weights"].append(fusion_weights(getattr(net, "fuser", None)))
            parts["emb"].append(emb)
            parts["logits"].append(logits)
        res[split] = {
            "ids": parts["ids"], "labels": np.concatenate(parts["labels"]),
            "inputs": {k: torch.cat(v) for k, v in inputs.items()},
            "emb": torch.cat(parts["emb"]) if parts["emb"] and parts["emb"][0] is not None else None,
            "logits": torch.cat(parts["logits"]).numpy(),
            "weights": {k: np.concatenate([w[k] for w in parts["weights"]]) for k in parts["weights"][0]},
        }
    return res


def _fusion_tables(net, dm, data: dict, heads: list[str], out: Path) -> dict:
    train = data["train"]
    means = {k: v.mean(dim=0, keepdim=True) for k, v in train["inputs"].items()}
    if train["emb"] is not None:
        means["image"] = train["emb"].mean(dim=0, keepdim=True)
    weight_rows, contrib_rows = [], []
    for split, d in data.items():
        base = pd.DataFrame({"subject_id": d["ids"], "split": split})
        for t, name in enumerate(heads[: d["labels"].shape[1]]):
            base[f"label_{name}"] = d["labels"][:, t]
        if "survival" in heads:
            base["os_event"] = dm.survival.loc[d["ids"], "os_event"].to_numpy(dtype=np.float64)
        if d["weights"]:
            weight_rows.append(pd.concat([base, pd.DataFrame(d["weights"])], axis=1))
        contrib = branch_contributions(net, d["inputs"], d["emb"], means)
        frame = base.copy()
        for h, name in enumerate(heads):
            frame[f"output_{name}"] = d["logits"][:, h]
            for branch, values in contrib.items():
                frame[f"{branch}_{name}"] = values[:, h]
        contrib_rows.append(frame)
    info = {"branches": sorted({k for k in ("image", *train["inputs"]) if k in means})}
    if weight_rows:
        pd.concat(weight_rows, ignore_index=True).to_csv(out / "fusion_weights.csv", index=False)
        info["fusion_weights"] = type(net.fuser).__name__
    contrib = pd.concat(contrib_rows, ignore_index=True)
    contrib.to_csv(out / "branch_contributions.csv", index=False)
    label = next((c for c in contrib.columns if c.startswith("label_")), "os_event" if "os_event" in contrib else None)
    cols = [c for c in contrib.columns if c.split("_", 1)[0] in info["branches"]]
    if label is not None and cols:
        by = contrib.assign(**{label: contrib[label].fillna(-1).astype(int).astype(str).replace("-1", "unknown")})
        summary = by.groupby(["split", label])[cols].agg(["mean", lambda v: float(np.mean(np.abs(v))), "size"])
        summary.columns = [f"{c}_{'mean' if s == 'mean' else 'n' if s == 'size' else 'mean_abs'}"
                           for c, s in summary.columns]
        summary.reset_index().to_csv(out / "branch_contributions_by_class.csv", index=False)
    return info


def _network_shap(net, data: dict, heads: list[str], names: list[str], s: dict, out: Path) -> dict:
    """Permutation SHAP of each head w.r.t. the radiomics vector, the subject's other inputs held fixed."""
    train = data["train"]
    bg = background_rows(train["inputs"]["radiomics"].numpy(), s["n_background"], s["seed"])
    info = {}
    for h, head in enumerate(heads):
        t0 = time.perf_counter()
        results = []
        for split in s["shap_splits"]:
            d = data[split]
            for i, sid in enumerate(d["ids"]):
                fixed = {k: v[i:i + 1] for k, v in d["inputs"].items() if k != "radiomics"}
                emb = None if d["emb"] is None else d["emb"][i:i + 1]

                def f(R: np.ndarray, fixed=fixed, emb=emb, h=h) -> np.ndarray:
                    n = len(R)
                    x = {"radiomics": torch.as_tensor(R, dtype=torch.float32),
                         **{k: v.expand(n, -1) for k, v in fixed.items()}}
                    with torch.no_grad():
                        return forward_logits(net, x, None if emb is None else emb.expand(n, -1), n)[:, h].numpy()

                results.append(explain_function(f, bg, d["inputs"]["radiomics"][i:i + 1].numpy(), names, [sid],
                                                seed=s["seed"]))
        if not results:
            continue
        merged = ShapResult(np.concatenate([r.values for r in results]),
                            np.concatenate([r.base_values for r in results]), np.concatenate([r.data for r in results]),
                            names, [r.subjects[0] for r in results], "permutation")
        prefix = f"{head}_" if len(heads) > 1 else ""
        res = write_shap(merged, out, prefix, f"{head}: SHAP of the radiomics input (network {head} logit)")
        seconds = time.perf_counter() - t0
        info[head] = {**res, "seconds": round(seconds, 3), "seconds_per_subject": round(seconds / len(results), 4)}
    return info


def _saliency_subjects(s: dict, dm, data: dict) -> list[tuple[str, str, int]]:
    """``(subject, split, row)`` for the maps: the configured ids, else ``n_per_class`` test subjects per class
    of the first marker (of the event indicator for survival-only runs)."""
    where = {sid: (split, i) for split, d in data.items() for i, sid in enumerate(d["ids"])}
    if s["subjects"]:
        missing = [sid for sid in s["subjects"] if sid not in where]
        if missing:
            raise ValueError(f"explanation.subjects: {missing} are not subjects of this run "
                             f"(e.g. {sorted(where)[:5]})")
        return [(sid, *where[sid]) for sid in s["subjects"]]
    test = data["test"]
    if dm.targets:
        cls = test["labels"][:, 0]
    else:
        cls = dm.survival.loc[test["ids"], "os_event"].to_numpy(dtype=np.float64)
    chosen = []
    for c in (0.0, 1.0):
        rows = [i for i in np.argsort(test["ids"]) if cls[i] == c][: int(s["n_per_class"])]
        chosen += [(test["ids"][i], "test", int(i)) for i in rows]
    return chosen


def _saliency(net, dm, data: dict, heads: list[str], s: dict, out: Path) -> dict:
    folder = out / "saliency"
    folder.mkdir(parents=True, exist_ok=True)
    settings = dm.roi_settings
    names = list(settings.sequences)
    rows = []
    for sid, split, i in _saliency_subjects(s, dm, data):
        t0 = time.perf_counter()
        roi = np.load(dm.roi_paths[sid]).astype(np.float32)
        fixed = {k: v[i:i + 1] for k, v in data[split]["inputs"].items()}
        logit = float(data[split]["logits"][i, 0])
        sign = 1.0 if (logit >= 0 or heads[0] == "survival") else -1.0

        def f(img: torch.Tensor, fixed=fixed, sign=sign) -> torch.Tensor:
            n = img.shape[0]
            return sign * net(image=img, **{k: v.expand(n, -1) for k, v in fixed.items()})[:, 0]

        with unfrozen(getattr(net, "encoder", None)), torch.enable_grad():
            attr, delta, gap = integrated_gradients(f, torch.from_numpy(roi), n_steps=int(s["ig_steps"]))
        cohort = dm.cohort
        mask = roi_mask(roi, settings, cohort.subject(sid) if sid in cohort.ids else None, cohort.label_convention,
                        cohort.geometry_tolerance, cohort.brain_mask)
        inside, fraction = mask_share(attr, mask)
        save_nifti(folder / f"{sid}_ig.nii.gz", attr)
        save_nifti(folder / f"{sid}_roi.nii.gz", roi)
        save_nifti(folder / f"{sid}_mask.nii.gz", mask.astype(np.float32))
        label = (data[split]["labels"][i, 0] if data[split]["labels"].shape[1]
                 else float(dm.survival.loc[sid, "os_event"]))
        what = f"{'+' if sign > 0 else '-'}{heads[0]} {'risk' if heads[0] == 'survival' else 'logit'}"
        overlay_png(folder / f"{sid}.png", roi, attr, mask, names,
                    f"{sid} ({split}) — IG of {what} (output {logit:+.2f}, label {label:g})\n"
                    f"{100 * inside:.0f}% of positive attribution in the tumour ({100 * fraction:.0f}% of the ROI)")
        label_column = f"label_{heads[0]}" if dm.targets else "os_event"
        rows.append({"subject_id": sid, "split": split, label_column: label, "output": logit, "explained": what,
                     "positive_share_in_mask": inside, "mask_fraction": fraction, "ig_delta": delta,
                     "f_x_minus_f_baseline": gap, "seconds": time.perf_counter() - t0})
    table = pd.DataFrame(rows)
    table.to_csv(folder / "saliency.csv", index=False)
    return {"n_subjects": len(rows), "baseline": "all-zero ROI (brain mean of z-scored sequences)",
            "seconds_per_subject": round(float(table["seconds"].mean()), 3) if rows else None,
            "median_positive_share_in_mask": float(table["positive_share_in_mask"].median()) if rows else None,
            "median_mask_fraction": float(table["mask_fraction"].median()) if rows else None}


def explain_network(settings: Mapping | None, dm, net, out_dir: Path, state_dict: Mapping | None = None) -> dict:
    """SHAP of the radiomics input, IG saliency on the ROI, fusion weights and branch contributions of a
    trained :class:`~radfusion.models.fusion.FusionNet` (``module.net``). With ``state_dict`` (the
    LightningModule's, e.g. the best checkpoint's) a copy of ``net`` with those weights is explained;
    otherwise the weights it holds now. Everything runs on the CPU."""
    s = explain_settings(settings)
    out = Path(out_dir) / "explain"
    out.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(net).cpu().eval()
    if state_dict is not None:
        net.load_state_dict({k.removeprefix("net."): v for k, v in state_dict.items() if k.startswith("net.")})
    heads = _heads(dm)
    t0 = time.perf_counter()
    data = _collect(net, dm, SPLITS)
    summary = {"kind": "network", "mode": net.mode, "settings": s, "seconds": {}}
    summary["fusion"] = _fusion_tables(net, dm, data, heads, out)
    summary["seconds"]["forward_and_contributions"] = round(time.perf_counter() - t0, 3)
    if getattr(net, "uses_radiomics", False):
        names = list(getattr(dm.feature_pipeline, "feature_names_out_", []))
        summary["shap"] = _network_shap(net, data, heads, names, s, out)
    if getattr(net, "uses_images", False) and getattr(dm, "roi_paths", None):
        summary["saliency"] = _saliency(net, dm, data, heads, s, out)
    summary["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    _write_json(out, summary)
    log.info("explanations in %s", out)
    return summary
