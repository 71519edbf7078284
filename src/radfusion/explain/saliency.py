"""Integrated gradients on the ROI tensor, the tumour mask on the ROI grid, NIfTI maps and PNG overlays.

Attribution (``captum.attr.IntegratedGradients``) is of one scalar output of the network with respect to
the ROI tensor ``(C, S, S, S)``, every other input of the subject (radiomics, clinical) held fixed. The
baseline is an all-zero ROI: 0 is the brain mean of every z-scored sequence, so the path runs from "an
average brain with no tumour contrast" to the subject's ROI. Completeness (captum's convergence delta):
``sum(attribution) = f(x) - f(0)`` up to the Riemann/Gauss-Legendre error of ``n_steps``.

The tumour mask is the whole-tumour (WT) mask on the ROI grid: taken from the ROI's own habitat
channels when ``data.roi.habitats`` has them (WT, or the union of ET/NCR/ED), else rebuilt with the
same ROI settings plus a WT channel (:func:`radfusion.imaging.roi.build_roi`: the same crop and
resize), thresholded at 0.5 (the resized mask is soft).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from radfusion.imaging.roi import ROISettings, build_roi


def integrated_gradients(forward: Callable[[torch.Tensor], torch.Tensor], roi: torch.Tensor, n_steps: int = 32,
                         internal_batch_size: int = 8) -> tuple[np.ndarray, float, float]:
    """IG of ``forward`` (``(B, C, S, S, S) -> (B,)``) at ``roi`` ``(C, S, S, S)`` from a zero baseline.

    Returns ``(attribution (C, S, S, S), convergence delta, f(x) - f(baseline))``.
    """
    from captum.attr import IntegratedGradients

    x = roi[None].float()
    baseline = torch.zeros_like(x)
    ig = IntegratedGradients(forward)
    attr, delta = ig.attribute(x, baselines=baseline, n_steps=n_steps, internal_batch_size=internal_batch_size,
                               return_convergence_delta=True)
    with torch.no_grad():
        gap = float(forward(x)[0] - forward(baseline)[0])
    return attr[0].detach().cpu().numpy().astype(np.float32), float(delta.reshape(-1)[0]), gap


def roi_mask(roi: np.ndarray, settings: ROISettings, subject=None, label_convention=None,
             tolerance: float | None = None, brain_mask: str = "auto") -> np.ndarray:
    """Whole-tumour mask ``(S, S, S)`` bool on the ROI grid (see the module doc for where it comes from)."""
    first = len(settings.sequences)
    channels = {h: first + i for i, h in enumerate(settings.habitats)}
    if "WT" in channels:
        return roi[channels["WT"]] >= 0.5
    parts = [channels[h] for h in ("ET", "NCR", "ED") if h in channels]
    if len(parts) == 3:
        return roi[parts].sum(axis=0) >= 0.5
    if subject is None:
        raise ValueError("roi_mask: the ROI has no WT channel; give the subject to rebuild the mask")
    with_wt = dataclasses.replace(settings, habitats=(*settings.habitats, "WT"), presence_channels=False)
    kw = {} if tolerance is None else {"tolerance": tolerance}
    cube = build_roi(subject, with_wt, label_convention, brain_mask=brain_mask, **kw)
    return cube[first + len(settings.habitats)].astype(np.float32) >= 0.5


def mask_share(attribution: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """``(share of the positive attribution inside the mask, the mask's share of the ROI volume)``.

    ``attribution`` is ``(S, S, S)`` (channels summed) or ``(C, S, S, S)`` (summed here)."""
    a = attribution.sum(axis=0) if attribution.ndim == 4 else attribution
    pos = np.clip(a, 0, None)
    total = float(pos.sum())
    inside = float(pos[mask].sum()) / total if total > 0 else float("nan")
    return inside, float(mask.mean())


def save_nifti(path: Path, array: np.ndarray) -> None:
    """A ``(S, S, S)`` or ``(C, S, S, S)`` ROI-grid array as NIfTI: numpy ``(z, y, x)`` becomes NIfTI
    ``(x, y, z[, channel])``, identity affine (1 unit = one ROI voxel; the ROI grid is a resized crop,
    not scanner space)."""
    import nibabel as nib

    data = np.asarray(array, dtype=np.float32)
    data = np.ascontiguousarray(data.transpose(3, 2, 1, 0) if data.ndim == 4 else data.transpose(2, 1, 0))
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def overlay_png(path: Path, roi: np.ndarray, attribution: np.ndarray, mask: np.ndarray,
                channel_names: Sequence[str], title: str) -> None:
    """Middle axial / coronal / sagittal slices: each sequence with the tumour outline, then the
    attribution summed over channels (red: for the explained output, blue: against) over the first
    sequence, outline on top. One colour scale (symmetric, 99th percentile of |attribution|) per figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    a = attribution.sum(axis=0)
    n_seq = len(channel_names)
    S = a.shape[0]
    mid = S // 2
    views = {"axial": lambda v: v[mid], "coronal": lambda v: v[:, mid], "sagittal": lambda v: v[:, :, mid]}
    vmax = float(np.percentile(np.abs(a), 99)) or 1.0
    n_col = n_seq + 1
    width = 2.2 * n_col + 1.5  # inches; the last 1.5 hold the colour bar and its label
    fig, axes = plt.subplots(len(views), n_col, figsize=(width, 2.2 * len(views) + 0.8), squeeze=False)
    for r, (view, cut) in enumerate(views.items()):
        m = cut(mask).astype(float)
        for c in range(n_col):
            ax = axes[r][c]
            ax.imshow(cut(roi[c if c < n_seq else 0]), cmap="gray", origin="lower")
            if c == n_seq:  # the attribution where it is not negligible, so the anatomy shows through
                sl = cut(a)
                shown = np.ma.masked_where(np.abs(sl) < 0.05 * vmax, sl)
                im = ax.imshow(shown, cmap="bwr", vmin=-vmax, vmax=vmax, alpha=0.8, origin="lower")
            if m.any():
                ax.contour(m, levels=[0.5], colors="yellow" if c < n_seq else "lime", linewidths=1.2)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(channel_names[c] if c < n_seq else f"IG, sum of channels\n(over {channel_names[0]})",
                             fontsize=9)
        axes[r][0].set_ylabel(view, fontsize=9)
    right = 1 - 1.3 / width
    fig.subplots_adjust(left=0.4 / width, right=right, top=0.86, bottom=0.03, wspace=0.05, hspace=0.08)
    cax = fig.add_axes([right + 0.15 / width, 0.15, 0.15 / width, 0.65])
    fig.colorbar(im, cax=cax, label="attribution (red: for, blue: against)")
    cax.yaxis.label.set_size(8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
