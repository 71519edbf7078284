"""The batch contract: one dictionary per subject, collated by the default DataLoader.

Batches are dictionaries::

    {"subject_id": [B] str, "labels": (B, T) float, "label_mask": (B, T) float,
     "image": (B, C, S, S, S) float (deep/hybrid), "radiomics": (B, F) float (handcrafted/hybrid),
     "time": (B,) days, "event": (B,), "surv_mask": (B,)  (with survival),
     "clinical": (B, K) float (with model.clinical: the fold-processed covariates)}

``labels[:, t]`` is 0 where unknown and ``label_mask[:, t]`` says which entries count. With a frozen
encoder "image" is the subject's cached pooled embedding ``(B, raw_features)`` instead of the ROI
volume (see :mod:`radfusion.training.frozen`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


class SubjectDataset(Dataset):
    """One item per subject; ROI tensors are read from their cached ``.npy`` on access."""

    def __init__(self, ids: list[str], labels: np.ndarray, radiomics: np.ndarray | None = None,
                 roi_paths: list[Path] | None = None, transform=None, survival: np.ndarray | None = None,
                 embeddings: np.ndarray | None = None, clinical: np.ndarray | None = None,
                 seed: int | None = None) -> None:
        self.ids = ids
        # Augmentation of item i in epoch e is seeded from (seed, e, i): the same in a resumed run, in
        # any worker and under any batch order. Shared memory, so persistent workers see set_epoch.
        self.seed = seed
        self.epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.clinical = clinical
        self.embeddings = embeddings
        self.labels = labels
        self.survival = survival
        self.radiomics = radiomics
        self.roi_paths = roi_paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation the next items get (see ``seed``)."""
        self.epoch.fill_(int(epoch))

    def item_seed(self, i: int) -> int | None:
        """Augmentation seed of item ``i`` in the current epoch (None: no ``seed`` given)."""
        if self.seed is None:
            return None
        return int(np.random.SeedSequence([int(self.seed), int(self.epoch), int(i)]).generate_state(1)[0])

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
        if self.clinical is not None:
            item["clinical"] = torch.from_numpy(np.asarray(self.clinical[i], dtype=np.float32))
        if self.radiomics is not None:
            item["radiomics"] = torch.from_numpy(self.radiomics[i]).float()
        if self.embeddings is not None:
            item["image"] = torch.from_numpy(self.embeddings[i])
        elif self.roi_paths is not None:
            image = torch.from_numpy(np.load(self.roi_paths[i]).astype(np.float32))
            if self.transform is not None:
                seed = self.item_seed(i)
                image = self.transform(image) if seed is None else self.transform(image, seed=seed)
            item["image"] = image
            item["image"] = torch.as_tensor(item["image"]).float()
        return item
