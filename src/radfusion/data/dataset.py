"""The batch contract: one dictionary per subject, collated by the default DataLoader.

Batches are dictionaries::

    {"subject_id": [B] str, "labels": (B, T) float, "label_mask": (B, T) float,
     "image": (B, C, S, S, S) float (deep/hybrid), "radiomics": (B, F) float (handcrafted/hybrid),
     "time": (B,) days, "event": (B,), "surv_mask": (B,)  (with survival)}

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
