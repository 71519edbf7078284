"""The Lightning datamodule: cohort → (cached) radiomics + ROI tensors → split → fitted transforms.

Batches are dictionaries::

    {"subject_id": [B] str, "labels": (B, T) float, "label_mask": (B, T) float,
     "image": (B, C, S, S, S) float (deep/hybrid), "radiomics": (B, F) float (handcrafted/hybrid)}

With a frozen encoder (:meth:`RadFusionDataModule.use_frozen_encoder`) "image" is the subject's cached
pooled embedding ``(B, raw_features)`` instead of the ROI volume (see :mod:`radfusion.training.frozen`).

``labels[:, t]`` is 0 where unknown and ``label_mask[:, t]`` says which entries count.

Leakage rules enforced here: splits are subject-level; the radiomics pipeline (imputer, variance
filter, scaler) is fitted on the training subjects only (:attr:`fitted_on` records them); the
test split is never used for any choice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from radfusion.cohort.readers import load_cohort
from radfusion.cohort.subject import Cohort, CohortError
from radfusion.cohort.validate import validate_cohort
from radfusion.data.samplers import EventBatchSampler
from radfusion.data.splits import SPLITS, load_or_make_fold
from radfusion.features.processor import make_feature_processor
from radfusion.imaging.roi import ROIAugment, ROISettings, build_roi_cache
from radfusion.radiomics.extract import extract_cohort
from radfusion.radiomics.settings import FeatureSettings

log = logging.getLogger(__name__)

# Prepared cohorts of this process, for ``reuse_in_process`` (sweeps): key → prepared attributes.
_PREPARED: dict[str, dict] = {}


def _plain(cfg):
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def check_survival(survival: pd.DataFrame) -> None:
    """Refuse survival data a Cox model cannot use, naming the subjects (before any training)."""
    time, event = survival["os_days"], survival["os_event"]
    bad_time = survival.index[(time <= 0).fillna(False)]
    if len(bad_time):
        raise CohortError(f"os_days must be > 0; subjects {list(bad_time[:5])} have {list(time[bad_time[:5]])}")
    bad_event = survival.index[~event.isin([0.0, 1.0]) & event.notna()]
    if len(bad_event):
        raise CohortError(f"os_event must be 1 (death) or 0 (censored); subjects {list(bad_event[:5])}")
    known = time.notna() & event.notna()
    if known.sum() == 0:
        raise CohortError("survival requested but no subject has both os_days and os_event")
    if event[known].sum() == 0:
        raise CohortError("all subjects are censored: a Cox model cannot be fitted (no events)")
    if event[known].sum() == known.sum():
        log.warning("no subject is censored (all %d have events)", int(known.sum()))


class SubjectDataset(Dataset):
    """One item per subject; ROI tensors are read from their cached ``.npy`` on access."""

    def __init__(self, ids: list[str], labels: np.ndarray, radiomics: np.ndarray | None = None,
                 roi_paths: list[Path] | None = None, transform=None, survival: np.ndarray | None = None,
                 embeddings: np.ndarray | None = None) -> None:
        self.ids = ids
        self.embeddings = embeddings
        self.labels = labels
        self.survival = survival
        self.radiomics = radiomics
        self.roi_paths = roi_paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        lab = self.labels[i]
        item = {
            "subject_id": self.ids[i],
            "labels": torch.from_numpy(np.nan_to_num(lab, nan=0.0)).float(),
            "label_mask": torch.from_numpy(~np.isnan(lab)).float(),
        }
        if self.survival is not None:
            time, event = self.survival[i]
            known = bool(np.isfinite(time) and np.isfinite(event))
            item["time"] = torch.tensor(time if known else 1.0, dtype=torch.float32)
            item["event"] = torch.tensor(event if known else 0.0, dtype=torch.float32)
            item["surv_mask"] = torch.tensor(float(known))
        if self.radiomics is not None:
            item["radiomics"] = torch.from_numpy(self.radiomics[i]).float()
        if self.embeddings is not None:
            item["image"] = torch.from_numpy(self.embeddings[i])
        elif self.roi_paths is not None:
            image = torch.from_numpy(np.load(self.roi_paths[i]).astype(np.float32))
            item["image"] = self.transform(image) if self.transform else image
            item["image"] = torch.as_tensor(item["image"]).float()
        return item


class RadFusionDataModule(pl.LightningDataModule):
    """Cohort, features and splits for one experiment.

    Args:
        cohort: ``{source: synthetic|manifest|brats2021, path, clinical, label_convention,
            skip_invalid, geometry_tolerance}``.
        synthetic: generator settings used when ``cohort.source == synthetic``.
        features: PyRadiomics / habitat settings (see :class:`FeatureSettings`).
        roi: ROI settings (see :class:`ROISettings`).
        targets: binary marker columns to predict (``idh``, ``mgmt``, ``codeletion``); may be empty
            when ``survival`` is on.
        survival: also serve overall survival (``os_days``, ``os_event``) for a Cox head.
        codeletion_idh_mutant_only: 1p/19q codeletion is defined for IDH-mutant gliomas only
            (WHO 2021); its label is masked for IDH-wildtype / unknown subjects.
        min_events_per_batch: with survival, training batches are drawn so that each holds at
            least this many events (a Cox loss on a batch without events is zero).
        split: the validation protocol (see :func:`radfusion.data.splits.load_or_make_fold`):
            ``{strategy: holdout|kfold|site, n_folds, n_repeats, fold, repeat, val_fraction,
            test_fraction, seed, test_sites, n_inner, inner_fold}``.
        processing: in-fold feature processing (see :class:`radfusion.features.processor.FeatureProcessor`):
            ``{combat, combat_covariates, corr_threshold, selector, n_features, min_icc, icc_table, clip}``.
        use_images, use_radiomics: which inputs the model needs (set from the model's mode).
        augmentation: keyword arguments of :class:`~radfusion.imaging.roi.ROIAugment` (training only).
        reuse_in_process: reuse the validated cohort and cache paths prepared earlier in this
            process with the same settings and unchanged files (sweeps; off by default).
    """

    def __init__(
        self,
        cohort: dict,
        features: dict,
        roi: dict,
        cache_dir: str,
        splits_dir: str,
        synthetic: dict | None = None,
        targets: Sequence[str] = ("idh",),
        survival: bool = False,
        codeletion_idh_mutant_only: bool = True,
        min_events_per_batch: int = 2,
        split: dict | None = None,
        processing: dict | None = None,
        seed: int = 0,
        batch_size: int = 8,
        num_workers: int = 0,
        n_jobs: int = 1,
        augment: bool = True,
        augmentation: dict | None = None,
        use_images: bool = True,
        use_radiomics: bool = True,
        progress: bool = True,
        reuse_in_process: bool = False,
    ) -> None:
        super().__init__()
        self.cohort_cfg = _plain(cohort)
        self.synthetic_cfg = _plain(synthetic)
        self.feature_settings = FeatureSettings.from_config(_plain(features))
        roi_cfg = _plain(roi)
        roi_cfg["sequences"] = tuple(roi_cfg.get("sequences", ROISettings.sequences))
        self.roi_settings = ROISettings(**roi_cfg)
        self.cache_dir = Path(cache_dir)
        self.splits_dir = Path(splits_dir)
        self.targets = list(targets)
        self.survival_target = bool(survival)
        self.codeletion_idh_mutant_only = codeletion_idh_mutant_only
        self.min_events_per_batch = min_events_per_batch
        if not self.targets and not self.survival_target:
            raise ValueError("data.targets is empty and data.survival is false: nothing to predict")
        self.split_cfg = {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 0, **(_plain(split) or {})}
        self.processing_cfg = dict(_plain(processing) or {})
        self.seed = int(seed)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.n_jobs = n_jobs
        self.augment = augment
        self.augmentation = dict(_plain(augmentation) or {})
        self.embeddings: dict[str, np.ndarray] | None = None
        self.use_images = use_images
        self.use_radiomics = use_radiomics
        self.progress = progress
        self.reuse_in_process = reuse_in_process
        self._ready = False

    # ------------------------------------------------------------------ preparation
    def _read_cohort(self) -> Cohort:
        """The cohort as listed (generated first if synthetic), not yet validated."""
        c = self.cohort_cfg
        path = c["path"]
        if c["source"] == "synthetic":
            from radfusion.synthetic.generator import generate_cohort

            syn = dict(self.synthetic_cfg or {})
            if "shape" in syn:
                syn["shape"] = tuple(syn["shape"])
            path = generate_cohort(path, progress=self.progress, **syn)
            source = "manifest"
        else:
            source = c["source"]
        return load_cohort(source, path, c.get("clinical"), c.get("label_convention", "brats2021"))

    def load_cohort(self) -> Cohort:
        c = self.cohort_cfg
        cohort = self._read_cohort()
        return validate_cohort(cohort, tolerance=c.get("geometry_tolerance", 1e-3),
                               skip_invalid=c.get("skip_invalid", False), min_subjects=2)

    def prepare_data(self) -> None:
        self._prepare()

    def _prepare(self) -> None:
        """Generate / validate the cohort and fill the feature and ROI caches (idempotent)."""
        if self._ready:
            return
        failures: dict[str, str] = {}
        if self.cohort_cfg["source"] == "feature_table":
            self._prepare_feature_table()
            return
        key = self._reuse_key() if self.reuse_in_process else None
        if key is not None and key in _PREPARED:
            log.info("data.reuse_in_process: reusing this process's validated cohort and cache paths")
            self.__dict__.update(_PREPARED[key])
            self._ready = True
            return
        self.cohort = self.load_cohort()
        if self.use_radiomics:
            self.features = extract_cohort(self.cohort, self.feature_settings, self.cache_dir / "features",
                                           n_jobs=self.n_jobs, progress=self.progress)
            failures.update(self.features.attrs.get("failures", {}))
        if self.use_images:
            self.roi_paths, roi_failures = build_roi_cache(self.cohort, self.roi_settings, self.cache_dir,
                                                           n_jobs=self.n_jobs, progress=self.progress)
            failures.update(roi_failures)
        if failures:
            log.warning("%d subject(s) excluded after failures: %s", len(failures),
                        "; ".join(f"{k}: {v}" for k, v in sorted(failures.items())))
        self.failures = failures
        self.ids = [s for s in self.cohort.ids if s not in failures]
        self._ready = True
        if key is not None:
            _PREPARED[key] = {k: getattr(self, k) for k in ("cohort", "features", "roi_paths", "failures", "ids")
                              if hasattr(self, k)}

    def _reuse_key(self) -> str | None:
        """Key of a prepared cohort: the settings, the clinical table and the size + mtime of every
        image file (an edited file makes a new key). Sweeps run many trials in one process (or in
        reused joblib workers); re-validating every image and re-checksumming the caches for each
        trial would dominate a frozen-encoder trial. None when the cohort cannot be read (the full
        path then reports why)."""
        import os

        from radfusion.cache import settings_hash

        try:
            raw = self._read_cohort()
            files = [p for s in raw.subjects for p in (*s.images.values(), s.seg) if p is not None]
            stamp = [(str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in files]
            clinical = int(pd.util.hash_pandas_object(raw.clinical, index=True).sum())
        except (OSError, CohortError, ValueError, TypeError):
            return None
        return settings_hash({"cohort": self.cohort_cfg, "synthetic": self.synthetic_cfg,
                              "features": repr(self.feature_settings), "roi": self.roi_settings.key(),
                              "images": self.use_images, "radiomics": self.use_radiomics,
                              "cache": str(self.cache_dir), "files": stamp, "clinical": clinical}, length=40)

    def _prepare_feature_table(self) -> None:
        """Precomputed features + clinical table: no image is read, so no CNN branch."""
        from radfusion.cohort.feature_table import UNKNOWN_VALUES, load_feature_table

        if self.use_images:
            raise CohortError("data=feature_table has no images: use a handcrafted or baseline model "
                              "(experiment=..._handcrafted / ..._baseline_*), not deep or hybrid")
        c = self.cohort_cfg
        self.features, clinical = load_feature_table(
            c["features"], c.get("clinical"), id_column=c.get("id_column", "subject_id"),
            label_columns=c.get("label_columns"), unknown_values=c.get("unknown_values") or UNKNOWN_VALUES)
        self.cohort = Cohort([], clinical, c.get("label_convention", "brats2021"), None)
        self.failures = {}
        self.ids = list(clinical.index)
        self._ready = True

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "splits"):
            return
        self._prepare()
        clinical = self.cohort.clinical
        missing = [t for t in self.targets if t not in clinical.columns]
        if missing:
            raise CohortError(f"target column(s) {missing} not in the clinical table")
        self.labels = clinical.loc[self.ids, self.targets].to_numpy(dtype=np.float64)
        if "codeletion" in self.targets and self.codeletion_idh_mutant_only:
            not_mutant = clinical.loc[self.ids, "idh"].to_numpy(dtype=np.float64) != 1.0
            self.labels[not_mutant, self.targets.index("codeletion")] = np.nan
        self.survival = clinical.loc[self.ids, ["os_days", "os_event"]].astype(np.float64)
        if self.survival_target:
            check_survival(self.survival)
        strata = self.labels[:, 0] if self.targets else self.survival["os_event"].to_numpy()
        sites = clinical.loc[self.ids, "site"].astype(str).to_numpy()
        self.splits, self.splits_file = load_or_make_fold(
            self.splits_dir, self.ids, strata, sites=sites, groups=self._groups(), **self.split_cfg)
        self.fold = int(self.split_cfg.get("fold", 0))
        self.repeat = int(self.split_cfg.get("repeat", 0))
        self._check_splits()
        if self.use_radiomics:
            self._fit_feature_processor()
        else:
            self.radiomics_dim = 0

    def _groups(self) -> list[str]:
        """Subject of each row: timepoints of one subject share it, so they never straddle splits."""
        clinical = self.cohort.clinical
        if "patient_id" in clinical.columns:
            return clinical.loc[self.ids, "patient_id"].astype(str).tolist()
        return list(self.ids)

    def _fit_feature_processor(self) -> None:
        """Fit imputation / ComBat / filters / scaling / selection on the training split only."""
        clinical = self.cohort.clinical
        train_ids = self.splits["train"]
        index = {s: i for i, s in enumerate(self.ids)}
        rows = [index[s] for s in train_ids]
        if self.targets:
            y = self.labels[rows, 0]
        else:
            y = (self.survival["os_days"].to_numpy()[rows], self.survival["os_event"].to_numpy()[rows])
        covariates = clinical[list(self.processing_cfg.get("combat_covariates") or [])]
        self.feature_pipeline = make_feature_processor(self.processing_cfg)
        self.feature_pipeline.fit(self.features.loc[train_ids], y, sites=clinical.loc[train_ids, "site"],
                                  covariates=covariates.loc[train_ids])
        self.fitted_on = list(train_ids)
        self.feature_names_in = list(self.features.columns)
        self.radiomics = {
            split: self.feature_pipeline.transform(self.features.loc[ids], sites=clinical.loc[ids, "site"],
                                                   covariates=covariates.loc[ids])
            for split, ids in self.splits.items()}
        self.radiomics_dim = int(self.radiomics["train"].shape[1])
        log.info("radiomics: %d raw features → %d after in-fold processing (%s)", len(self.feature_names_in),
                 self.radiomics_dim, self.feature_pipeline.summary_)

    def _check_splits(self) -> None:
        index = {s: i for i, s in enumerate(self.ids)}
        for name in SPLITS:
            unknown = set(self.splits[name]) - set(index)
            if unknown:
                raise CohortError(f"splits file {self.splits_file} names subjects not in the cohort "
                                  f"(e.g. {sorted(unknown)[:3]}); delete it to re-split")
            rows = [index[s] for s in self.splits[name]]
            if name == "test" and not rows and self.split_cfg.get("inner_fold") is not None:
                continue  # an inner (nested-CV) fold: the outer test split stays untouched
            for t, target in enumerate(self.targets):
                y = self.labels[rows, t]
                y = y[~np.isnan(y)]
                if len(y) and len(np.unique(y)) == 2:
                    continue
                msg = (f"too small a cohort: the {name} split has {len(y)} labelled subjects for "
                       f"{target!r} ({'one class only' if len(y) else 'none'}); both classes are needed. "
                       "Add subjects or change the split fractions")
                if t == 0 or name == "train":
                    raise CohortError(msg)
                log.warning("%s; %s metrics on %s will be undefined", msg, target, name)
            if self.survival_target:
                events = np.nansum(self.survival["os_event"].to_numpy()[rows])
                if events < 2:
                    msg = f"the {name} split has {int(events)} event(s); a Cox model needs at least 2"
                    if name == "train":
                        raise CohortError(f"too small a cohort: {msg}")
                    log.warning("%s; its C-index will be undefined or unstable", msg)

    def _dataset(self, split: str, augment: bool) -> SubjectDataset:
        ids = self.splits[split]
        index = {s: i for i, s in enumerate(self.ids)}
        transform = None
        if augment and self.embeddings is None:
            transform = ROIAugment(len(self.roi_settings.sequences), **self.augmentation)
        rows = [index[s] for s in ids]
        return SubjectDataset(
            ids, self.labels[rows],
            survival=self.survival.to_numpy()[rows] if self.survival_target else None,
            radiomics=self.radiomics[split] if self.use_radiomics else None,
            roi_paths=[self.roi_paths[s] for s in ids] if self.use_images else None,
            transform=transform,
            embeddings=np.stack([self.embeddings[s] for s in ids]) if self.embeddings is not None else None,
        )

    def use_frozen_encoder(self, encoder) -> None:
        """Serve cached pooled embeddings of a frozen ``encoder`` as "image" (no ROI loading, no
        augmentation). Called by the LightningModule's ``setup``; idempotent per encoder."""
        from radfusion.training.frozen import compute_embeddings

        if not self.use_images or getattr(self, "_frozen_encoder_key", None) == id(encoder):
            return
        self.embeddings = compute_embeddings(encoder, {s: self.roi_paths[s] for s in self.ids}, self.cache_dir,
                                             batch_size=max(self.batch_size, 8), progress=self.progress)
        self._frozen_encoder_key = id(encoder)

    def _loader(self, split: str, shuffle: bool, augment: bool) -> DataLoader:
        dataset = self._dataset(split, augment)
        if shuffle and self.survival_target:
            events = np.nan_to_num(dataset.survival[:, 1], nan=0.0)
            sampler = EventBatchSampler(events, self.batch_size, min_events=self.min_events_per_batch,
                                        seed=self.seed)
            return DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers,
                              persistent_workers=self.num_workers > 0)
        # A last training batch of one subject makes BatchNorm statistics meaningless: drop it.
        drop_last = shuffle and len(dataset) % self.batch_size == 1 and len(dataset) > self.batch_size
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, drop_last=drop_last,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, augment=self.augment and self.use_images)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False, augment=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False, augment=False)

    def split_dataloader(self, split: str) -> DataLoader:
        """Un-augmented, unshuffled loader of any split (for writing predictions)."""
        return self._loader(split, shuffle=False, augment=False)
