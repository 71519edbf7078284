"""The model bundle: everything a trained model needs to score a new patient, in ``<run>/model/``.

Every run (network or baseline) writes one (:func:`write_bundle`); ``predict.py`` reads it
(:func:`load_bundle`). The folder holds::

    bundle.json        what the model is and what it expects: format version, radfusion version, mode,
                       targets, feature / preprocessing / ROI settings (with their cache keys), label
                       convention, habitats and sequences, clinical columns, feature names in order,
                       the training sites, library versions, the files below with their SHA-1
    weights.pt         network weights (a plain state dict: ``torch.load(..., weights_only=True)``)
    processor.skops    the fitted radiomics processor (imputer, ComBat, filters, scaler, selector)
    clinical.json      the fitted clinical transform (when the model takes clinical columns), plain JSON
    baseline.skops     the fitted classical model(s) (baselines)
    pyradiomics.yaml   a copy of the PyRadiomics parameter file, when the run used one

Nothing here is a bare pickle. The ``.skops`` files are read with :mod:`skops.io`, which rebuilds
only the types it is told to trust: the bundle lists the types each file needs, and loading
refuses any type outside radfusion, scikit-learn, scikit-survival, xgboost, numpy and scipy
(:data:`TRUSTED_PREFIXES`), whatever the list says. A network's architecture is rebuilt from its
resolved ``model`` config, whose ``_target_`` entries must name radfusion, torch or MONAI classes.
See ``docs/bundle.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from radfusion import __version__
from radfusion.cache import atomic_write_text, file_sha1

log = logging.getLogger(__name__)

FORMAT = "radfusion-bundle"
#: Bump when the layout changes in a way an older reader cannot follow.
FORMAT_VERSION = 1
#: Module prefixes whose types a ``.skops`` file may contain.
TRUSTED_PREFIXES = ("radfusion.", "sklearn.", "sksurv.", "xgboost.", "numpy.", "scipy.", "collections.",
                    "builtins.")
#: Module prefixes a network config's ``_target_`` may name.
TARGET_PREFIXES = ("radfusion.", "torch.", "monai.", "functools.partial")


class BundleError(ValueError):
    """A model bundle that cannot be used; the message names the bundle, what is wrong and the fix."""


# ------------------------------------------------------------------------------------------ skops
def _trusted(types: list[str], where: Path) -> list[str]:
    bad = [t for t in types if not t.startswith(TRUSTED_PREFIXES)]
    if bad:
        raise BundleError(f"{where}: holds object type(s) {bad} outside the trusted libraries "
                          f"({', '.join(p.rstrip('.') for p in TRUSTED_PREFIXES)}); refusing to load it. "
                          "Re-create the bundle by training with this radfusion version")
    return types


def dump_skops(obj: Any, path: Path) -> list[str]:
    """Write ``obj`` with skops; return the non-default types loading it will need to trust."""
    import skops.io as sio

    data = sio.dumps(obj)
    types = _trusted(sorted(sio.get_untrusted_types(data=data)), path)
    path.write_bytes(data)
    return types


def load_skops(path: Path, declared: list[str]) -> Any:
    """Read a ``.skops`` file, trusting only the declared types, each from a trusted library."""
    import skops.io as sio

    data = path.read_bytes()
    needed = sorted(sio.get_untrusted_types(data=data))
    _trusted(needed, path)
    undeclared = sorted(set(needed) - set(declared))
    if undeclared:
        raise BundleError(f"{path}: needs type(s) {undeclared} that bundle.json does not declare; the file was "
                          "changed after the bundle was written. Re-create the bundle")
    return sio.loads(data, trusted=needed)


# ------------------------------------------------------------------------------------------ write
def _plain(cfg) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a core dependency
        return cfg
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def write_bundle(run_dir: str | Path, cfg, dm, *, model=None, state_dict: dict | None = None,
                 baseline: dict | None = None, precision: str = "32-true") -> Path:
    """Write ``<run_dir>/model/`` for a trained network (``model`` + ``state_dict``) or baseline
    (``baseline = {"models": {head: estimator}, "predict_kw": {...}, "info": {...}}``).

    ``dm`` is the set-up datamodule: its settings, fitted processors, feature names and training
    sites are what the bundle records; ``precision`` is the Trainer's (resolved) precision, under which
    predict.py scores as the run did. Returns the bundle folder.
    """
    import torch
    from omegaconf import OmegaConf

    from radfusion.provenance import library_versions

    out = Path(run_dir) / "model"
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict] = {}

    def _skops(name: str, obj: Any) -> None:
        types = dump_skops(obj, out / name)
        files[name] = {"trusted_types": types}

    mode = str(cfg.model.mode)
    features = asdict(dm.feature_settings)
    if features.get("params_file"):
        shutil.copyfile(features["params_file"], out / "pyradiomics.yaml")
        files["pyradiomics.yaml"] = {}
        features["params_file"] = "pyradiomics.yaml"
    if getattr(dm, "use_radiomics", False) and getattr(dm, "feature_pipeline", None) is not None:
        _skops("processor.skops", dm.feature_pipeline)
    if getattr(dm, "clinical_pipeline", None) is not None:  # plain JSON (ClinicalTransformer.to_state)
        atomic_write_text(out / "clinical.json", json.dumps(dm.clinical_pipeline.to_state(), indent=1))
        files["clinical.json"] = {}
    kind = "baseline" if baseline is not None else "network"
    spec: dict[str, Any] = {}
    if baseline is not None:
        _skops("baseline.skops", baseline["models"])
        spec = {"baseline": _plain(cfg.model.get("baseline")), "predict_kw": baseline.get("predict_kw") or {},
                "info": baseline.get("info") or {}}
    else:
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, out / "weights.pt")
        files["weights.pt"] = {}
        spec = {"config": _plain(cfg.model), "radiomics_dim": int(dm.radiomics_dim or 0) or None,
                "clinical_dim": int(getattr(dm, "clinical_dim", 0) or 0) or None,
                "frozen_encoder": bool(getattr(dm, "embeddings", None) is not None),
                # predict.py scores under the same autocast and memory format as the run's predictions
                "precision": str(precision),
                "channels_last": bool(OmegaConf.select(cfg, "callbacks.channels_last.enabled", default=False))}
    for name in files:
        files[name]["sha1"] = file_sha1(out / name)
    clinical = dm.cohort.clinical
    train_ids = list(dm.splits["train"])
    cohort_cfg = dict(dm.cohort_cfg)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "radfusion_version": __version__,
        "kind": kind, "mode": mode, "experiment": cfg.get("task_name"),
        "targets": list(dm.targets), "survival": bool(dm.survival_target),
        "codeletion_idh_mutant_only": bool(dm.codeletion_idh_mutant_only),
        "uses_images": bool(dm.use_images), "uses_radiomics": bool(dm.use_radiomics),
        "cohort": {k: cohort_cfg.get(k) for k in ("source", "label_convention", "sequences", "label_values",
                                                    "missing_sequences", "brain_mask", "geometry_tolerance")},
        "features": features, "feature_settings_hash": dm.feature_settings.cache_key(),
        "roi": {**asdict(dm.roi_settings), "key": dm.roi_settings.key()},
        "processing": dict(dm.processing_cfg),
        "combat": bool(dm.processing_cfg.get("combat")),
        "combat_unseen": dm.processing_cfg.get("combat_unseen", "identity"),
        "combat_covariates": list(dm.processing_cfg.get("combat_covariates") or []),
        "feature_names_in": list(getattr(dm, "feature_names_in", []) or []),
        "feature_names_out": list(getattr(getattr(dm, "feature_pipeline", None), "feature_names_out_", []) or []),
        "clinical_columns": list(getattr(dm, "clinical_columns", []) or []),
        "clinical_categorical": list(getattr(dm, "clinical_categorical", []) or []),
        "explanation": {"explain": bool(cfg.get("explain", False)), **(_plain(cfg.get("explanation")) or {})},
        "training_sites": sorted(clinical.loc[train_ids, "site"].astype(str).unique().tolist()),
        "n_train": len(train_ids),
        # Subjects the model was fitted (train) or selected (val, early stopping) on, hashed: predict.py
        # scores a cohort only on the others, so a run's own subjects never pass for an external result.
        "seen_subject_hashes": sorted(subject_hash(i) for split in ("train", "val")
                                      for i in dm.splits.get(split, [])),
        "model": spec, "files": files, "versions": library_versions(),
    }
    atomic_write_text(out / "bundle.json", json.dumps(meta, indent=2, default=str))
    return out


def subject_hash(subject_id: str) -> str:
    """How a bundle records a subject it was fitted or selected on: a short SHA-1 of its id (not the id)."""
    return hashlib.sha1(str(subject_id).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ read
class Bundle:
    """A loaded bundle: ``meta`` (bundle.json) and the objects it holds, loaded on first use."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path = path
        self.meta = meta

    def __getitem__(self, key: str) -> Any:
        return self.meta[key]

    def _file(self, name: str) -> Path:
        entry = self.meta["files"].get(name)
        path = self.path / name
        if entry is None:
            raise BundleError(f"bundle {self.path}: has no {name}")
        if not path.is_file():
            raise BundleError(f"bundle {self.path}: {name} is missing; the bundle is incomplete (copy the whole "
                              "model/ folder)")
        if file_sha1(path) != entry.get("sha1"):
            raise BundleError(f"bundle {self.path}: {name} does not match the checksum in bundle.json (changed or "
                              "corrupt); copy the bundle again from the training run")
        return path

    def load(self, name: str) -> Any:
        """The object of a ``.skops`` file (None when the bundle has no such file)."""
        if name not in self.meta["files"]:
            return None
        return load_skops(self._file(name), self.meta["files"][name].get("trusted_types", []))

    def clinical(self):
        """The fitted clinical transform (:class:`radfusion.features.clinical.ClinicalTransformer`)."""
        from radfusion.features.clinical import ClinicalTransformer

        return ClinicalTransformer.from_state(json.loads(self._file("clinical.json").read_text()))

    def state_dict(self) -> dict:
        import torch

        return torch.load(self._file("weights.pt"), map_location="cpu", weights_only=True)

    def params_file(self) -> str | None:
        return str(self._file("pyradiomics.yaml")) if "pyradiomics.yaml" in self.meta["files"] else None

    def network(self):
        """The trained :class:`~radfusion.models.lit_module.RadFusionModule`, in eval mode."""
        from hydra.utils import instantiate

        spec = self.meta["model"]
        check_targets(spec["config"], self.path)
        kwargs = {"radiomics_dim": spec.get("radiomics_dim")}
        if spec.get("clinical_dim"):
            kwargs["clinical_dim"] = spec["clinical_dim"]
        module = instantiate(spec["config"], **kwargs)
        state = self.state_dict()
        try:
            module.load_state_dict(state)
        except RuntimeError as err:
            raise BundleError(f"bundle {self.path}: weights.pt does not fit the network its config builds "
                              f"({str(err).splitlines()[0]}); was the code changed since training?") from err
        return module.eval()


def check_targets(node: Any, where: Path) -> None:
    """Refuse a config whose ``_target_`` entries name anything outside :data:`TARGET_PREFIXES`."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not str(target).startswith(TARGET_PREFIXES):
            raise BundleError(f"bundle {where}: model config names {target!r}; only radfusion, torch and MONAI "
                              "classes are built from a bundle")
        for value in node.values():
            check_targets(value, where)
    elif isinstance(node, list):
        for value in node:
            check_targets(value, where)


def load_bundle(path: str | Path) -> Bundle:
    """Read ``bundle.json`` of a bundle folder, a run folder (its ``model/``) or the json itself."""
    path = Path(path)
    if path.is_file() and path.name == "bundle.json":
        path = path.parent
    elif (path / "model" / "bundle.json").is_file():
        path = path / "model"
    meta_path = path / "bundle.json"
    if not meta_path.is_file():
        hint = (" (a run folder from before bundles existed: retrain it with this version)"
                if (path / "predictions.csv").is_file() else "")
        raise BundleError(f"{path}: not a radfusion model bundle (no bundle.json, nor model/bundle.json){hint}. "
                          "Point model= at a run folder runs/<experiment>/<time> or its model/ folder")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{meta_path}: not valid JSON ({err})") from err
    if meta.get("format") != FORMAT:
        raise BundleError(f"{meta_path}: not a radfusion model bundle (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"bundle {path}: made by radfusion {meta.get('radfusion_version')} (bundle format "
                          f"{version}); this is radfusion {__version__} (format {FORMAT_VERSION}). Use radfusion "
                          f"{meta.get('radfusion_version')} to apply it, or retrain with this version")
    if meta.get("radfusion_version") != __version__:
        log.warning("bundle %s was made by radfusion %s; this is radfusion %s (same bundle format %d): check that "
                    "the feature code did not change between them (docs/bundle.md)", path,
                    meta.get("radfusion_version"), __version__, FORMAT_VERSION)
    return Bundle(path, meta)
