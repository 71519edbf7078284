"""Tumour-centred ROI tensors for the CNN branch, cached on disk once per subject.

Per subject: load the four sequences once (resampled, z-scored in the brain), cut a cube around
the whole-tumour bounding box (plus a relative margin, zero-padded outside the volume) and resize
it to ``size³`` voxels (``extent="fit"``). Resizing makes every tumour the same size on the CNN's
input, so absolute volume is *not* visible to the deep branch; the handcrafted shape features carry
it. That is intended: the two branches should see different things for fusion to matter.
``extent="fixed"`` instead cuts ``size³`` voxels at ``spacing`` mm around the tumour centre without
rescaling (true physical scale, e.g. for an nnU-Net encoder trained at 1 mm).

Optional ``habitats`` (e.g. ``[ET, NCR, ED]``) are appended as extra channels (binary masks, soft after
resizing), after the sequences. Training-time augmentation is
:class:`radfusion.imaging.augment.ROIAugment`.

A sequence the subject lacks (``data.cohort.missing_sequences=impute``) gets an all-zero channel: 0 is
the brain mean of a z-scored sequence, so the channel carries no intensity information. Zero alone
cannot tell "missing" from "average" to the network, so ``presence_channels=true`` appends one constant
channel per sequence, after the habitats: 1 where the subject has the sequence, 0 where it lacks it.
The channel count is :attr:`ROISettings.n_channels`, which ``model.encoder.in_channels`` follows.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from radfusion.cache import (
    CacheWriteError,
    atomic_save_npy,
    files_sha1,
    remove_stale_temporaries,
    settings_hash,
    text_sha1,
)
from radfusion.cohort.habitats import HABITATS, habitat_mask
from radfusion.cohort.subject import GEOMETRY_TOLERANCE, SEQUENCES, Cohort, CohortError, Subject, check_sequences
from radfusion.imaging.preprocess import brain_key, load_preprocessed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ROISettings:
    """How ROI tensors are made.

    Attributes:
        size: edge of the output cube in voxels (48 on CPU, 96–128 on GPU).
        spacing: isotropic resampling before cropping, mm (None keeps native).
        margin: cube edge = largest tumour extent × (1 + 2·margin).
        min_extent_mm: lower bound of the cube edge, mm (tiny tumours keep some context).
        sequences: channel order.
        habitats: habitat masks appended as channels after the sequences (``ET``, ``NCR``, ``ED``,
            ``TC``, ``WT``).
        extent: ``fit`` (tumour box + margin, resized to ``size``) or ``fixed`` (``size`` voxels at
            ``spacing`` mm around the tumour centre, no resizing; ``margin``/``min_extent_mm`` unused).
        presence_channels: append one constant channel per sequence (1 = the subject has it, 0 = it
            lacks it and its image channel is all zero), after the habitat channels.
    """

    size: int = 48
    spacing: float | None = 1.0
    margin: float = 0.15
    min_extent_mm: float = 24.0
    sequences: tuple[str, ...] = SEQUENCES
    habitats: tuple[str, ...] = field(default=())
    extent: str = "fit"
    presence_channels: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "sequences", check_sequences(self.sequences, "data.roi.sequences"))
        if not isinstance(self.presence_channels, bool):
            raise ValueError(f"data.roi.presence_channels must be true or false, got {self.presence_channels!r}")
        object.__setattr__(self, "habitats", tuple(self.habitats))
        unknown = [h for h in self.habitats if h not in HABITATS]
        if unknown:
            raise ValueError(f"data.roi.habitats: unknown habitat(s) {unknown}; choose from {list(HABITATS)}")
        if self.extent not in ("fit", "fixed"):
            raise ValueError(f"data.roi.extent must be 'fit' or 'fixed', got {self.extent!r}")

    @property
    def n_channels(self) -> int:
        """Sequences, then habitat masks, then (with ``presence_channels``) one presence flag per sequence."""
        return len(self.sequences) * (2 if self.presence_channels else 1) + len(self.habitats)

    def key(self) -> str:
        settings = asdict(self)
        # Options added after the first release stay out of the hash at their defaults, so existing
        # ROI caches remain valid.
        for name, default in (("habitats", ()), ("extent", "fit"), ("presence_channels", False)):
            if settings[name] == default:
                del settings[name]
        return settings_hash(settings)


def _cube_slices(center: np.ndarray, edge: int, shape: tuple[int, ...]):
    """Source/destination slices of a cube of ``edge`` voxels centred at ``center``, clipped to ``shape``."""
    src, dst = [], []
    for c, n in zip(center, shape, strict=False):
        lo = int(round(c - edge / 2))
        hi = lo + edge
        src.append(slice(max(lo, 0), min(hi, n)))
        dst.append(slice(max(lo, 0) - lo, edge - (hi - min(hi, n))))
    return tuple(src), tuple(dst)


def build_roi(subject: Subject, settings: ROISettings, label_convention,
              tolerance: float = GEOMETRY_TOLERANCE, brain_mask: str = "auto") -> np.ndarray:
    """ROI tensor of one subject: ``(n_channels, size, size, size)`` float16: z-scored intensities of
    ``sequences``, then ``habitats`` masks in [0, 1]. ``tolerance``: image/mask geometry tolerance (the
    validated cohort's ``geometry_tolerance``; not in the ROI cache key, the values do not depend on it);
    ``brain_mask``: the brain of the z-score (the cohort's ``brain_mask``; in the key unless the default).
    A sequence the subject lacks has an all-zero channel (and presence flag 0 with ``presence_channels``)."""
    present = [s for s in settings.sequences if s in subject.images]
    if not present:
        raise CohortError(f"subject {subject.subject_id}: none of the ROI sequences {list(settings.sequences)} "
                          f"has an image (it has {sorted(subject.images)})")
    images, seg = load_preprocessed(subject, spacing=settings.spacing, normalize="zscore", scale=1.0,
                                    sequences=present, tolerance=tolerance, brain_mask=brain_mask)
    if seg is None:
        raise CohortError(f"subject {subject.subject_id}: no segmentation; the ROI needs a tumour mask")
    seg_arr = sitk.GetArrayFromImage(seg)
    wt = habitat_mask(seg_arr, "WT", label_convention)
    spacing = np.array(seg.GetSpacing()[::-1])  # numpy order (z, y, x)
    if wt.any():
        idx = np.argwhere(wt)
        lo, hi = idx.min(0), idx.max(0) + 1
    else:
        log.warning("subject %s: empty whole-tumour mask (%s); ROI centred on the brain",
                    subject.subject_id, subject.seg)
        brain = sitk.GetArrayViewFromImage(images[present[0]]) != 0
        idx = np.argwhere(brain) if brain.any() else np.argwhere(np.ones_like(brain))
        lo, hi = idx.min(0), idx.max(0) + 1
        hi = lo + np.maximum((hi - lo) // 3, 1)
    if settings.extent == "fixed":
        edge = settings.size
    else:
        extent_mm = float(np.max((hi - lo) * spacing)) * (1 + 2 * settings.margin)
        extent_mm = max(extent_mm, settings.min_extent_mm)
        # An isotropic cube in mm; after 1 mm resampling this is a voxel cube.
        edge = int(np.ceil(extent_mm / float(spacing.min())))
    center = (lo + hi) / 2.0
    src, dst = _cube_slices(center, edge, seg_arr.shape)
    cube = np.zeros((settings.n_channels, edge, edge, edge), dtype=np.float32)
    for c, seq in enumerate(settings.sequences):
        if seq in images:  # a missing sequence stays all zero
            cube[c][dst] = sitk.GetArrayViewFromImage(images[seq])[src]
    for c, name in enumerate(settings.habitats, start=len(settings.sequences)):
        cube[c][dst] = habitat_mask(seg_arr, name, label_convention)[src]
    if edge != settings.size:
        tensor = torch.from_numpy(cube)[None]
        cube = torch.nn.functional.interpolate(tensor, size=(settings.size,) * 3, mode="trilinear",
                                               align_corners=False)[0].numpy()
    if settings.presence_channels:  # set after resizing, so each flag is exactly 0 or 1
        first = len(settings.sequences) + len(settings.habitats)
        for c, seq in enumerate(settings.sequences, start=first):
            cube[c] = 1.0 if seq in images else 0.0
    return cube.astype(np.float16)


def roi_cache_path(subject: Subject, settings: ROISettings, cache_dir: str | Path, brain_mask: str = "auto") -> Path:
    """Where the subject's ROI tensor is cached: named by the settings and the inputs' contents (the
    brain, :func:`~radfusion.imaging.preprocess.brain_key`, only when it is not the default)."""
    # A missing sequence counts as absent (no file to hash): the key changes when its file appears.
    checksum = files_sha1([subject.images.get(s) for s in settings.sequences] + [subject.seg])
    brain = brain_key(subject, brain_mask)
    if brain is not None:
        checksum = text_sha1(f"{checksum}|brain={brain}")
    return Path(cache_dir) / "rois" / settings.key() / f"{subject.subject_id}-{checksum[:12]}.npy"


def _cached_roi(subject: Subject, settings: ROISettings, label_convention, cache_dir: Path,
                tolerance: float = GEOMETRY_TOLERANCE, brain_mask: str = "auto") -> tuple[str, str | None, str | None]:
    try:
        path = roi_cache_path(subject, settings, cache_dir, brain_mask)
        if not path.exists():
            atomic_save_npy(path, build_roi(subject, settings, label_convention, tolerance, brain_mask))
        return subject.subject_id, str(path), None
    except CacheWriteError:  # the disk, not the subject: build_roi_cache stops the run
        raise
    except (CohortError, OSError, RuntimeError) as err:
        return subject.subject_id, None, f"{type(err).__name__}: {err}"


def build_roi_cache(cohort: Cohort, settings: ROISettings, cache_dir: str | Path, n_jobs: int = 1,
                    progress: bool = True) -> tuple[dict[str, Path], dict[str, str]]:
    """Make (or reuse) every subject's ROI file.

    Returns ``(paths, failures)``: ROI path per subject id, and an error message per failed
    subject. Failures never stop the others; callers decide whether to continue without them. A
    cache that cannot be written (full, read-only disk) is no subject's failure: it raises
    :class:`~radfusion.cache.CacheWriteError`. The cohort's ``geometry_tolerance`` (the one it was
    validated with) applies to every read, its
    ``brain_mask`` to every z-score.
    """
    unknown = [s for s in settings.sequences if s not in cohort.sequences]
    if unknown:
        raise CohortError(f"data.roi.sequences {list(settings.sequences)} include {unknown}, which the cohort does not "
                          f"have (data.cohort.sequences={list(cohort.sequences)}); leave data.roi.sequences at its "
                          "default")
    cache_dir = Path(cache_dir)
    jobs = (delayed(_cached_roi)(s, settings, cohort.label_convention, cache_dir, cohort.geometry_tolerance,
                                 cohort.brain_mask)
            for s in cohort.subjects)
    runner = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator_unordered")
    results = tqdm(runner(jobs), total=len(cohort), desc="ROI tensors", disable=not progress)
    paths, failures = {}, {}
    try:
        for sid, path, error in results:
            if error is None:
                paths[sid] = Path(path)
            else:
                failures[sid] = error
                log.error("ROI failed for subject %s: %s", sid, error)
    except CacheWriteError as err:  # a full or read-only disk fails every later ROI too: stop
        remove_stale_temporaries(cache_dir / "rois", min_age_s=0)  # left by workers killed mid-write
        where = f"writing {err.filename}" + (f"; {err.detail}" if err.detail else "")
        raise CacheWriteError(err.errno, cache_dir, "ROI cache", where) from None
    return paths, failures
