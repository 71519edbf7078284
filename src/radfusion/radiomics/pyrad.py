"""PyRadiomics plumbing: a validated extractor, quiet logging, and the extraction plan.

The plan splits a PyRadiomics configuration into *units*, the pieces the engine computes and
caches separately: one unit per enabled image type, except LoG, which gets one unit per sigma
(changing ``sigma: [1, 3]`` to ``[1, 3, 5]`` then computes only sigma 5). Shape features form
their own unit (they depend on the mask only).
"""

from __future__ import annotations

import copy
import logging
import threading
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from radfusion.cache import file_sha1, settings_hash

#: Image types whose filter output depends on the mask (PyRadiomics' LBP3D reads the mask):
#: computed per habitat instead of once per sequence.
MASK_DEPENDENT_IMAGE_TYPES = frozenset({"LBP3D"})

#: Settings the engine takes care of itself (they never reach PyRadiomics' execute path).
_ENGINE_SETTINGS = {"additionalInfo", "label", "label_channel", "preCrop", "geometryTolerance", "correctMask"}


class _CountingHandler(logging.Handler):
    """Counts PyRadiomics log records by message instead of printing each one."""

    def __init__(self, counts: Counter) -> None:
        super().__init__(level=logging.WARNING)
        self.counts = counts

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"radiomics {record.levelname}: {record.getMessage()[:200]}"] += 1


def quiet_pyradiomics() -> None:
    """Stop PyRadiomics from printing: its stderr handler shows errors only, the logger no longer
    builds INFO records (several per call) that nobody reads, and nothing propagates to the root
    logger (Hydra's handlers would print e.g. the GLCM "Sum Average" warning once per region x
    sequence). Warnings still reach :func:`capture_warnings`, which counts them."""
    import radiomics

    radiomics.setVerbosity(logging.ERROR)
    rlog = logging.getLogger("radiomics")
    rlog.setLevel(logging.WARNING)
    rlog.propagate = False


@contextmanager
def capture_warnings() -> Iterator[Counter]:
    """Count PyRadiomics log warnings and Python warnings (e.g. numpy divide-by-zero) by message."""
    counts: Counter = Counter()
    handler = _CountingHandler(counts)
    rlog = logging.getLogger("radiomics")
    rlog.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield counts
        finally:
            rlog.removeHandler(handler)
            for w in caught:
                counts[f"{w.category.__name__}: {str(w.message)[:200]}"] += 1


def build_extractor(params: dict | str | Path):
    """A ``RadiomicsFeatureExtractor`` from a parameter dict or a YAML/JSON file path.

    Raises:
        FileNotFoundError: the parameter file does not exist.
        ValueError: PyRadiomics' schema rejects the parameters (message says which).
    """
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    quiet_pyradiomics()
    if isinstance(params, (str, Path)):
        if not Path(params).is_file():
            raise FileNotFoundError(f"PyRadiomics parameter file {params} does not exist")
        source, arg = f"parameter file {params}", str(params)
    else:
        source, arg = "parameter dict", copy.deepcopy(dict(params))
    try:
        return RadiomicsFeatureExtractor(arg)
    except Exception as err:  # pykwalify raises its own SchemaError / CoreError types
        raise ValueError(f"PyRadiomics rejected the {source}: {err}") from err


def execute(extractor, image: sitk.Image | str | Path, mask: sitk.Image | str | Path,
            label: int) -> dict[str, float]:
    """``extractor.execute`` with diagnostics dropped and 0-d arrays turned into floats."""
    # PyRadiomics only recognises str paths (not pathlib) and sitk.Image objects.
    image = str(image) if isinstance(image, Path) else image
    mask = str(mask) if isinstance(mask, Path) else mask
    result = extractor.execute(image, mask, label=label)
    return {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}


def extract_region(image: sitk.Image | str | Path, mask: sitk.Image | str | Path,
                   params: dict | str | Path, label: int = 1) -> dict[str, float]:
    """PyRadiomics features of one image/mask pair (plain ``execute``), diagnostics dropped.

    Args:
        image: intensity image (sitk.Image or file path).
        mask: label image on the same grid (sitk.Image or file path).
        params: PyRadiomics parameter dict or YAML/JSON file.
        label: label value of the region in ``mask``.

    Returns:
        ``{"<imageType>_<class>_<Feature>": value}``, e.g. ``original_firstorder_Mean``.
    """
    return execute(build_extractor(params), image, mask, label)


@dataclass(frozen=True)
class Unit:
    """One cached piece of work per habitat: an image type with its custom arguments.

    Attributes:
        image_type: PyRadiomics image type (``Original``, ``LoG``, ``Wavelet``, ...).
        kwargs: its custom arguments (for LoG a single-sigma list).
        key: stable identifier of image type, arguments and enabled feature classes.
        shared: the filtered image does not depend on the habitat mask (computed once per sequence).
        box_dependent: the filtered values depend on the crop (every filter; not ``Original``).
    """

    image_type: str
    kwargs: dict
    key: str
    shared: bool
    box_dependent: bool


@dataclass
class Plan:
    """A validated PyRadiomics configuration, prepared for the shared-filtering engine.

    Attributes:
        extractor: PyRadiomics extractor (its ``computeFeatures`` / ``computeShape`` do the work).
        settings: PyRadiomics settings as ``execute`` would use them, with ``label = 1``.
        units: non-shape units, in PyRadiomics' image type order.
        shape_key: key of the shape unit, or None when no shape class is enabled.
        prep_key: hash of the settings that affect every unit (binning, resegmentation, ...).
        normalize: PyRadiomics' own ``normalize`` is on (applied once per whole sequence).
        resample: PyRadiomics' own resampling is on (applied once per sequence, on the crop).
    """

    extractor: Any
    settings: dict
    units: list[Unit] = field(default_factory=list)
    shape_key: str | None = None
    prep_key: str = ""
    normalize: bool = False
    resample: bool = False

    @property
    def has_texture(self) -> bool:
        return any(not c.startswith("shape") for c in self.extractor.enabledFeatures)


_PLANS: dict[str, Plan] = {}
_BIN_MEMO = threading.local()
#: Binnings the memo keeps per thread: the six habitats of one filtered image, newest first.
_MEMO_ENTRIES = 8


def _memoised_bin_image(real):
    """Wrap PyRadiomics' ``imageoperations.binImage`` so that repeated calls on equal inputs reuse
    one of the last ``_MEMO_ENTRIES`` results (the habitats of one filtered image).

    Every texture class (and firstorder) bins the same image and mask again in its constructor;
    for a large habitat that is ~20 % of the feature time, mostly Python's builtin ``min``/``max``
    over the ROI in ``getBinEdges``. The memo holds a few entries per thread and is used only when
    the image, the mask and the binning settings are equal to an entry's (checked each time), so
    results are exactly those of ``binImage`` itself.
    """

    def bin_image(parameterMatrix, parameterMatrixCoordinates=None, **kwargs):  # noqa: N803 - PyRadiomics' names
        key = (kwargs.get("binWidth", 25), kwargs.get("binCount"))
        entries = getattr(_BIN_MEMO, "last", None) or []
        mask = parameterMatrixCoordinates
        if isinstance(mask, np.ndarray):
            for last in entries:
                if (last[2] == key and last[0].shape == parameterMatrix.shape
                        and last[0].dtype == parameterMatrix.dtype and last[1].shape == mask.shape
                        and np.array_equal(last[1], mask) and np.array_equal(last[0], parameterMatrix)):
                    return last[3].copy(), last[4]
        matrix, edges = real(parameterMatrix, parameterMatrixCoordinates, **kwargs)
        if isinstance(mask, np.ndarray):
            entry = (parameterMatrix.copy(), mask.copy(), key, matrix.copy(), edges)
            _BIN_MEMO.last = [entry, *entries][:_MEMO_ENTRIES]
        return matrix, edges

    bin_image.radfusion_memo = True
    bin_image.__wrapped__ = real
    return bin_image


def _range_bin_edges(real):
    """Wrap PyRadiomics' ``imageoperations.getBinEdges`` to hand it only the ROI's minimum and maximum.

    Its edges depend on nothing else (binWidth: ``arange`` from the minimum's bin to past the
    maximum; binCount: ``numpy.histogram``'s edges, a ``linspace`` over the range), but it finds
    them with Python's builtin ``min``/``max``, element by element: 0.65 s of a BraTS-sized item.
    numpy's ``min``/``max`` return the same elements (same dtype) when the values are finite;
    anything else goes to PyRadiomics as it is.
    """

    def bin_edges(parameterValues, **kwargs):  # noqa: N803 - PyRadiomics' name
        values = parameterValues
        if isinstance(values, np.ndarray) and values.ndim == 1 and values.size > 2 and values.dtype.kind in "iuf":
            low, high = values.min(), values.max()
            if np.isfinite(low) and np.isfinite(high):
                values = np.array([low, high], dtype=values.dtype)
        return real(values, **kwargs)

    bin_edges.radfusion_memo = True
    bin_edges.__wrapped__ = real
    return bin_edges


_MEMO_LOCK = threading.Lock()
_MEMO_DEPTH = 0  # how many binning_memo blocks are open in this process (all threads)
_MEMO_REAL = None  # PyRadiomics' own (binImage, getBinEdges) while the wrappers are installed


@contextmanager
def binning_memo(enabled: bool = True) -> Iterator[None]:
    """Memoise PyRadiomics' ``imageoperations.binImage`` (see :func:`_memoised_bin_image`) and let
    its ``getBinEdges`` see only the ROI's range (:func:`_range_bin_edges`) inside the block, and
    restore PyRadiomics' own functions when the last open block ends.

    The engine opens one block per (subject, sequence) item, so nothing outside radfusion's
    extraction (a user's own ``RadiomicsFeatureExtractor.execute`` in the same process, the
    tests' plain PyRadiomics reference) ever runs through the wrapper. Blocks may nest or overlap
    across threads (Dask's threaded workers): a process-wide count installs the wrapper on the
    first and restores the original on the last. The values are identical either way; only the
    time changes, and ``enabled=False`` (``features.memo_binning: false``) leaves PyRadiomics as it is.
    """
    global _MEMO_DEPTH, _MEMO_REAL
    if not enabled:
        yield
        return
    from radiomics import imageoperations

    with _MEMO_LOCK:
        if _MEMO_DEPTH == 0:
            _MEMO_REAL = (imageoperations.binImage, imageoperations.getBinEdges)
            imageoperations.binImage = _memoised_bin_image(_MEMO_REAL[0])
            imageoperations.getBinEdges = _range_bin_edges(_MEMO_REAL[1])
        _MEMO_DEPTH += 1
    try:
        yield
    finally:
        _BIN_MEMO.last = None  # drop this thread's copies of the last image and mask
        with _MEMO_LOCK:
            _MEMO_DEPTH -= 1
            if _MEMO_DEPTH == 0:
                (imageoperations.binImage, imageoperations.getBinEdges), _MEMO_REAL = _MEMO_REAL, None


def build_plan(params: dict | str | Path) -> Plan:
    """The extraction plan of a PyRadiomics configuration (memoised per process)."""
    import radiomics

    # A parameter file by its content: editing it between two calls gives a new plan.
    digest = "file:" + file_sha1(params) if isinstance(params, (str, Path)) else settings_hash(params, None)
    if digest in _PLANS:
        return _PLANS[digest]
    extractor = build_extractor(params)
    settings = dict(extractor.settings)
    settings["label"] = 1  # radfusion builds every habitat mask with 1 inside
    settings.pop("additionalInfo", None)  # diagnostics are never computed
    # None and [] both mean "every feature of the class": one spelling, so that equivalent configs
    # (a YAML "glcm:" and a dict "glcm: []") share cache entries.
    enabled = {k: sorted(v) if v else None for k, v in extractor.enabledFeatures.items()}
    texture_classes = {k: v for k, v in enabled.items() if not k.startswith("shape")}
    shape_classes = {k: v for k, v in enabled.items() if k.startswith("shape")}
    resample = settings.get("resampledPixelSpacing") is not None and settings.get("interpolator") is not None
    common = {k: v for k, v in settings.items() if k not in _ENGINE_SETTINGS}
    prep_key = settings_hash({"settings": common, "pyradiomics": str(radiomics.__version__)}, 16)

    units: list[Unit] = []
    if texture_classes:
        classes_key = settings_hash(texture_classes, 8)
        for image_type, custom in extractor.enabledImagetypes.items():
            custom = dict(custom or {})
            if image_type == "LoG":
                # One unit per sigma: PyRadiomics yields one image per sigma anyway.
                args = {**settings, **custom}
                pieces = [{**custom, "sigma": [s]} for s in args.get("sigma", [])]
            else:
                pieces = [custom]
            for kw in pieces:
                key = f"{image_type}:{settings_hash([image_type, kw, classes_key], 12)}"
                box_dependent = image_type != "Original" or resample
                units.append(Unit(image_type, kw, key, image_type not in MASK_DEPENDENT_IMAGE_TYPES,
                                  box_dependent))
    shape_key = f"shape:{settings_hash([shape_classes, settings.get('resegmentShape', False)], 12)}" \
        if shape_classes else None
    plan = Plan(extractor, settings, units, shape_key, prep_key, bool(settings.get("normalize", False)),
                resample)
    _PLANS[digest] = plan
    return plan
