"""PyRadiomics' feature classes with their repeated set-up and first-order statistics done once.

The engine computes each habitat × filtered image with PyRadiomics' own classes. Outside their C
texture matrices, a BraTS-sized item spends ~6 s in Python (``scripts/bench_extraction.py
--profile``): each class sorts the ROI's grey levels again (``numpy.unique``), and first order
computes its moments and percentiles through numpy's NaN-aware functions one feature at a time
(``nanpercentile`` runs ``apply_along_axis`` per call; two moments are recomputed for skewness and
kurtosis). The subclasses here change only how those numbers are found, never what they are:

- grey levels and their counts from ``numpy.bincount`` (PyRadiomics' bins are positive integers):
  the same sorted integers as ``numpy.unique``; the feature names once per class, not per instance;
- first order, when the ROI holds no NaN (always, for a segment-based extraction of a finite
  image): the mean and the deviations once (cubes and fourth powers as products, not ``pow``),
  the 10/25/75/90th percentiles in one ``numpy.percentile`` call (the same order statistics and
  interpolation as ``nanpercentile``), and the robust MAD over the 10-90th percentile voxels
  directly. A ROI with a NaN, or a voxel-based extraction, goes to PyRadiomics' own code;
- GLSZM's zones as connected components of equal grey level (scikit-image's ``label``, one pass)
  instead of PyRadiomics' C region growing: the same integer counts, 2-2.5x faster on large habitats;
- GLRLM, when the engine hands it a matrix computed for several disjoint habitats at once
  (:mod:`radfusion.radiomics.runlength`): that matrix, else PyRadiomics' own C call.

Sums taken in a different order can differ in the last bits (≤ 1e-15 relative);
``tests/test_radiomics_classes.py`` holds every class to PyRadiomics' within 1e-12 on the
reference cases and synthetic habitats, and the engine tests hold whole items to ``execute``
within 1e-9 (``tests/test_radiomics_engine.py``, ``tests/test_radiomics_baseline_engine.py``).
"""

from __future__ import annotations

import collections
import functools

import numpy as np
from radiomics import getFeatureClasses, imageoperations
from radiomics.firstorder import RadiomicsFirstOrder
from radiomics.glrlm import RadiomicsGLRLM
from radiomics.glszm import RadiomicsGLSZM

from radfusion.radiomics.runlength import empty_grey_levels, process_run_lengths

__all__ = ["compute_features", "fast_feature_classes", "size_zone_matrix"]


def _levels_and_counts(binned: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``numpy.unique(binned, return_counts=True)`` for non-negative integers; None otherwise."""
    if binned.size == 0 or binned.dtype.kind not in "iu" or binned.min() < 0:
        return None
    counts = np.bincount(binned)
    levels = np.flatnonzero(counts).astype(binned.dtype, copy=False)
    return levels, counts[levels]


class _GreyLevelsByCount:
    """Mixin: ``_applyBinning`` with the ROI's grey levels counted instead of sorted, and the
    class's feature names (which PyRadiomics finds with ``inspect`` on every instance) found once."""

    _feature_names: dict | None = None

    @classmethod
    def getFeatureNames(cls):  # noqa: N802 - PyRadiomics' name
        if cls.__dict__.get("_feature_names") is None:
            cls._feature_names = super().getFeatureNames()
        return dict(cls._feature_names)

    def _applyBinning(self, matrix):  # noqa: N802 - PyRadiomics' name
        binned, _ = imageoperations.binImage(matrix, self.maskArray, **self.settings)
        found = _levels_and_counts(binned[self.maskArray])
        if found is None:  # empty or unusual: PyRadiomics' own handling (and its errors)
            self.coefficients["grayLevels"] = np.unique(binned[self.maskArray])
        else:
            self.coefficients["grayLevels"] = found[0]
        self.coefficients["Ng"] = int(np.max(self.coefficients["grayLevels"]))
        return binned


class _FirstOrderStats:
    """Mixin for ``RadiomicsFirstOrder``: its statistics computed once per ROI (see the module doc)."""

    def _initCalculation(self, voxelCoordinates=None):  # noqa: N802, N803 - PyRadiomics' names
        self._stats = None
        if voxelCoordinates is not None:
            return super()._initCalculation(voxelCoordinates)
        values = self.imageArray[self.maskArray].astype("float").reshape((1, -1))
        found = _levels_and_counts(self.discretizedImageArray[self.maskArray])
        if found is None or values.size == 0 or not np.isfinite(values).all():
            return super()._initCalculation(voxelCoordinates)
        self.targetVoxelArray = values
        p_i = found[1].reshape((1, -1))
        total = np.sum(p_i, 1, keepdims=True).astype("float")
        total[total == 0] = 1
        self.coefficients["p_i"] = p_i.astype("float") / total
        self._stats = {}

    def _stat(self, name: str):
        """Cached per-ROI statistic, or None when PyRadiomics' own NaN-aware code must run."""
        stats = self._stats
        if stats is None:
            return None
        if name not in stats:
            x = self.targetVoxelArray
            if name == "percentiles":
                stats[name] = dict(zip((10, 25, 75, 90), np.percentile(x, [10, 25, 75, 90], axis=1), strict=True))
            elif name == "deviation":
                stats[name] = x - np.mean(x, 1, keepdims=True)
            elif name == "squared deviation":
                d = self._stat("deviation")
                stats[name] = d * d
            elif name == "median":
                stats[name] = np.median(x, 1)
        return stats[name]

    def _moment(self, a, moment=1):
        d2 = self._stat("squared deviation") if a is self.targetVoxelArray else None
        if d2 is None or moment not in (2, 3, 4):
            return RadiomicsFirstOrder._moment(a, moment)
        # d*d*d and (d*d)**2 instead of numpy.power's libm pow: within an ulp per voxel, 10x faster.
        power = {2: d2, 3: d2 * self._stat("deviation"), 4: d2 * d2}[moment]
        return np.mean(power, 1)

    def get10PercentileFeatureValue(self):  # noqa: N802 - PyRadiomics' names from here on
        p = self._stat("percentiles")
        return super().get10PercentileFeatureValue() if p is None else p[10]

    def get90PercentileFeatureValue(self):
        p = self._stat("percentiles")
        return super().get90PercentileFeatureValue() if p is None else p[90]

    def getInterquartileRangeFeatureValue(self):
        p = self._stat("percentiles")
        return super().getInterquartileRangeFeatureValue() if p is None else p[75] - p[25]

    def getMedianFeatureValue(self):
        m = self._stat("median")
        return super().getMedianFeatureValue() if m is None else m

    def getRobustMeanAbsoluteDeviationFeatureValue(self):
        p = self._stat("percentiles")
        if p is None:
            return super().getRobustMeanAbsoluteDeviationFeatureValue()
        x = self.targetVoxelArray[0]
        kept = x[(x >= p[10][0]) & (x <= p[90][0])]  # the closed 10-90th percentile range, as PyRadiomics
        return np.array([np.mean(np.absolute(kept - np.mean(kept)))])


class _SharedRunLengths:
    """Mixin for ``RadiomicsGLRLM``: take the C matrix from :func:`radfusion.radiomics.runlength.shared_run_lengths`
    when the engine computed it for several habitats at once (``shared_matrix``)."""

    shared_matrix: tuple | None = None

    def _calculateMatrix(self, voxelCoordinates=None):  # noqa: N802, N803 - PyRadiomics' names
        shared = self.shared_matrix
        if shared is None or voxelCoordinates is not None or self.voxelBased:
            return super()._calculateMatrix(voxelCoordinates)
        matrix, angles = shared
        if matrix.shape[1] != self.coefficients["Ng"] or matrix.shape[2] != int(np.max(self.imageArray.shape)):
            return super()._calculateMatrix(voxelCoordinates)  # not this ROI's matrix: PyRadiomics' own call
        return process_run_lengths(self, matrix.copy(), angles)


def size_zone_matrix(binned: np.ndarray, mask: np.ndarray, n_levels: int) -> np.ndarray:
    """What PyRadiomics' C ``calculate_glszm`` returns for a 3D segment (no ``force2D``): the
    number of zones of each grey level and size, shape ``(1, n_levels, largest zone)``.

    A zone is a 26-connected set of ROI voxels of one grey level: scikit-image's ``label``, which
    joins neighbours of equal value, finds them in one pass (PyRadiomics grows each region from a
    seed voxel, with a linear search for the next voxel to visit: 2-2.5x slower on large habitats).
    """
    from skimage.measure import label

    labels, n_zones = label(np.where(mask, binned, 0), background=0, connectivity=3, return_num=True)
    flat = labels.ravel()
    inside = flat > 0
    sizes = np.bincount(flat, minlength=n_zones + 1)[1:]
    level = np.zeros(n_zones + 1, dtype=np.int64)
    level[flat[inside]] = binned.ravel()[inside]
    largest = int(sizes.max()) if n_zones else 0
    counts = np.bincount((level[1:] - 1) * largest + (sizes - 1), minlength=n_levels * largest)
    return counts.reshape(1, n_levels, largest).astype(np.float64)


class _ZonesByLabel:
    """Mixin for ``RadiomicsGLSZM``: its C matrix from :func:`size_zone_matrix` (segment-based,
    no ``force2D``), the rest of ``_calculateMatrix`` as PyRadiomics has it."""

    def _calculateMatrix(self, voxelCoordinates=None):  # noqa: N802, N803 - PyRadiomics' names
        if (voxelCoordinates is not None or self.voxelBased or self.settings.get("force2D", False)
                or max(self.imageArray.shape) < 2):  # one voxel: PyRadiomics' own error
            return super()._calculateMatrix(voxelCoordinates)
        matrix = size_zone_matrix(self.imageArray, self.maskArray, self.coefficients["Ng"])
        return np.delete(matrix, empty_grey_levels(self.coefficients) - 1, 1)


@functools.lru_cache(maxsize=1)
def fast_feature_classes() -> dict[str, type]:
    """PyRadiomics' feature classes by name, each with the faster equal set-up (shape excluded)."""
    fast: dict[str, type] = {}
    for name, cls in getFeatureClasses().items():
        if name.startswith("shape"):
            continue
        mixins: tuple = (_GreyLevelsByCount,)
        if issubclass(cls, RadiomicsFirstOrder):
            mixins = (_FirstOrderStats, *mixins)
        elif issubclass(cls, RadiomicsGLRLM):
            mixins = (_SharedRunLengths, *mixins)
        elif issubclass(cls, RadiomicsGLSZM):
            mixins = (_ZonesByLabel, *mixins)
        # PyRadiomics names each class's logger after its module: keep "radiomics.<class>", so the
        # warnings stay quiet and are still counted by capture_warnings.
        fast[name] = type(f"Fast{cls.__name__}", (*mixins, cls), {"__module__": cls.__module__})
    return fast


def compute_features(extractor, image, mask, image_type_name: str, run_lengths: tuple | None = None,
                     **kwargs) -> dict:
    """``extractor.computeFeatures`` (every enabled non-shape class on one cropped image) with the
    classes of :func:`fast_feature_classes`; feature names and values are PyRadiomics'.

    ``run_lengths``: this ROI's GLRLM C matrix and angles, if the engine computed them together
    with other habitats (:func:`radfusion.radiomics.runlength.shared_run_lengths`).
    """
    classes = fast_feature_classes()
    values: dict = collections.OrderedDict()
    for class_name, feature_names in extractor.enabledFeatures.items():
        if class_name.startswith("shape") or class_name not in classes:
            continue
        features = classes[class_name](image, mask, **kwargs)
        if run_lengths is not None and isinstance(features, _SharedRunLengths):
            features.shared_matrix = run_lengths
        for name in feature_names or []:
            features.enableFeatureByName(name)
        for name, value in features.execute().items():
            values[f"{image_type_name}_{class_name}_{name}"] = value
    return values
