"""The Lightning datamodule: a prepared cohort → subject-level split → in-fold feature processing → loaders.

The work lives in plain functions it calls in order: :func:`radfusion.data.prepare.prepare_cohort`
(read, validate, extract, build ROIs), :mod:`radfusion.data.targets` (labels and their checks),
:func:`radfusion.data.splits.load_or_make_fold` and :mod:`radfusion.features.processor`. The batch
contract is :class:`radfusion.data.dataset.SubjectDataset`.

Leakage rules enforced here: splits are subject-level; the radiomics pipeline (imputer, ComBat,
filters, scaler, selector) is fitted on the training subjects only (:attr:`fitted_on` records
them); the test split is never used for any choice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from radfusion.data.dataset import SubjectDataset
from radfusion.data.prepare import PreparedCohort, prepare_cohort
from radfusion.data.samplers import evaluation_loader, training_loader
from radfusion.data.splits import load_or_make_fold
from radfusion.data.targets import (
    check_cohort_size,
    check_split_targets,
    check_survival,
    marker_labels,
    survival_table,
)
from radfusion.features.clinical import check_not_targets, fit_clinical
from radfusion.features.processor import make_feature_processor
from radfusion.imaging.augment import ROIAugment
from radfusion.imaging.roi import ROISettings
from radfusion.radiomics.settings import FeatureSettings

log = logging.getLogger(__name__)


def _plain(cfg):
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


class RadFusionDataModule(pl.LightningDataModule):
    """Cohort, features and splits for one experiment.

    Args:
        cohort: a ``configs/cohort/`` block: ``{source: synthetic|manifest|brats2021|brats2023|nnunet|
            feature_table, path, clinical, label_convention, skip_invalid, geometry_tolerance,
            synthetic: {generator settings}}``.
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
        augmentation: keyword arguments of :class:`~radfusion.imaging.augment.ROIAugment` (training only).
        reuse_in_process: reuse the validated cohort and cache paths prepared earlier in this
            process with the same settings and unchanged files (sweeps; off by default).
        longitudinal: one row per patient with delta radiomics between two timepoints
            (:func:`radfusion.data.prepare.to_patient_level`); None: one row per scan.
        clinical_columns: clinical covariates served as batch key ``"clinical"`` (``model.clinical``), processed
            by :class:`radfusion.features.clinical.ClinicalTransformer` fitted on the training split;
            ``clinical_categorical`` names numeric ones to one-hot encode. A target column is refused.
    """

    def __init__(
        self,
        cohort: dict,
        features: dict,
        roi: dict,
        cache_dir: str,
        splits_dir: str,
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
        longitudinal: dict | None = None,
        clinical_columns: Sequence[str] | None = None,
        clinical_categorical: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.cohort_cfg = _plain(cohort)
        # The cohort's sequences drive radiomics and ROI channels unless these name their own.
        sequences = list(self.cohort_cfg.get("sequences") or ROISettings.sequences)
        self.feature_settings = FeatureSettings.from_config({"sequences": sequences, **(_plain(features) or {})})
        roi_cfg = dict(_plain(roi))
        roi_cfg["sequences"] = tuple(roi_cfg.get("sequences", sequences))
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
        self.longitudinal_cfg = _plain(longitudinal)
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
        self.prepared: PreparedCohort | None = None
        self.clinical_columns = [str(c) for c in (_plain(clinical_columns) or [])]
        self.clinical_categorical = [str(c) for c in (_plain(clinical_categorical) or [])]
        check_not_targets(self.clinical_columns, self.targets, self.survival_target)  # before any work

    # ------------------------------------------------------------------ preparation
    def prepare_data(self) -> None:
        self._prepare()

    def _prepare(self) -> PreparedCohort:
        """The prepared cohort (computed once; the caches make a rerun cheap)."""
        if self.prepared is None:
            self.prepared = prepare_cohort(
                self.cohort_cfg, self.feature_settings, self.roi_settings, self.cache_dir,
                use_images=self.use_images, use_radiomics=self.use_radiomics, n_jobs=self.n_jobs,
                progress=self.progress, reuse_in_process=self.reuse_in_process, longitudinal=self.longitudinal_cfg)
        return self.prepared

    # The prepared cohort's parts, under the names the rest of the code (and users' notebooks) read.
    @property
    def cohort(self):
        return self._prepare().cohort

    @property
    def ids(self) -> list[str]:
        return self._prepare().ids

    @property
    def features(self):
        return self._prepare().features

    @property
    def roi_paths(self):
        return self._prepare().roi_paths

    @property
    def failures(self) -> dict[str, str]:
        return self._prepare().failures

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "splits"):
            return
        clinical = self.cohort.clinical
        self.labels = marker_labels(clinical, self.ids, self.targets, self.codeletion_idh_mutant_only)
        self.survival = survival_table(clinical, self.ids)
        if self.survival_target:
            check_survival(self.survival)
        strata = self.labels[:, 0] if self.targets else self.survival["os_event"].to_numpy()
        sites = clinical.loc[self.ids, "site"].astype(str).to_numpy()
        # Too few subjects (per class, per split) is said here, before scikit-learn fails cryptically.
        check_cohort_size(self.labels, self.targets, self._groups(), self.split_cfg,
                          self.survival["os_event"].to_numpy() if self.survival_target else None)
        self.splits, self.splits_file = load_or_make_fold(
            self.splits_dir, self.ids, strata, sites=sites, groups=self._groups(), **self.split_cfg)
        self.fold = int(self.split_cfg.get("fold", 0))
        self.repeat = int(self.split_cfg.get("repeat", 0))
        check_split_targets(self.splits, self.ids, self.labels, self.targets,
                            self.survival["os_event"].to_numpy() if self.survival_target else None,
                            str(self.splits_file), inner_fold=self.split_cfg.get("inner_fold") is not None)
        if self.use_radiomics:
            self._fit_feature_processor()
        else:
            self.radiomics_dim = 0
        self._fit_clinical()

    def _fit_clinical(self) -> None:
        """Clinical covariates: imputation / encoding / scaling fitted on the training split only."""
        self.clinical_pipeline, self.clinical_inputs, self.clinical_dim = None, None, 0
        if self.clinical_columns:
            self.clinical_pipeline, self.clinical_inputs = fit_clinical(
                self.cohort.clinical, self.splits, self.clinical_columns, self.clinical_categorical,
                self.targets, self.survival_target)
            self.clinical_dim = len(self.clinical_pipeline.feature_names_out_)
            log.info("clinical: %s → %d inputs", self.clinical_columns, self.clinical_dim)

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

    def set_embeddings(self, embeddings: dict[str, np.ndarray] | None) -> None:
        """Serve these pooled embeddings (one per subject, from a frozen encoder) as "image" instead
        of the ROI volumes (no ROI loading, no augmentation). Training computes them
        (:func:`radfusion.training.frozen.compute_embeddings`) and hands them over; None goes back to ROIs."""
        if embeddings is not None:
            missing = [s for s in self.ids if s not in embeddings]
            if missing:
                raise KeyError(f"no embedding for subject(s) {missing[:5]}")
        self.embeddings = embeddings

    # ------------------------------------------------------------------ loaders
    def _dataset(self, split: str, augment: bool) -> SubjectDataset:
        ids = self.splits[split]
        index = {s: i for i, s in enumerate(self.ids)}
        transform = None
        if augment and self.embeddings is None:
            n_seq = len(self.roi_settings.sequences)
            transform = ROIAugment(n_seq, **self.augmentation,
                                   n_presence_channels=n_seq if self.roi_settings.presence_channels else 0)
        rows = [index[s] for s in ids]
        return SubjectDataset(
            ids, self.labels[rows],
            survival=self.survival.to_numpy()[rows] if self.survival_target else None,
            radiomics=self.radiomics[split] if self.use_radiomics else None,
            roi_paths=[self.roi_paths[s] for s in ids] if self.use_images else None,
            transform=transform,
            embeddings=np.stack([self.embeddings[s] for s in ids]) if self.embeddings is not None else None,
            clinical=self.clinical_inputs[split] if self.clinical_inputs is not None else None,
            seed=self.seed if transform is not None else None,
        )

    def _loader(self, split: str, shuffle: bool, augment: bool, shard: bool = False) -> DataLoader:
        """Training (``shuffle``) or evaluation loader; under DDP the samplers shard themselves
        (:mod:`radfusion.data.samplers`; training sets ``use_distributed_sampler=False``)."""
        dataset = self._dataset(split, augment)
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if shuffle:
            events = np.nan_to_num(dataset.survival[:, 1], nan=0.0) if self.survival_target else None
            return training_loader(dataset, self.batch_size, self.seed, events, self.min_events_per_batch,
                                   rank=rank, world_size=world, num_workers=self.num_workers)
        return evaluation_loader(dataset, self.batch_size, *((rank, world) if shard else (0, 1)),
                                 num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, augment=self.augment and self.use_images)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False, augment=False, shard=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False, augment=False, shard=True)

    def split_dataloader(self, split: str) -> DataLoader:
        """Un-augmented, unshuffled loader of any split (for writing predictions)."""
        return self._loader(split, shuffle=False, augment=False)
