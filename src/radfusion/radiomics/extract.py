"""Habitat radiomics: PyRadiomics per habitat × sequence, shape once per habitat, cached per subject.

Column names (one row per subject):

- ``<habitat>_voxels``: voxel count of the habitat after resampling;
- ``<habitat>_empty``: 1.0 if the habitat has fewer than ``min_voxels`` voxels (features NaN), else 0.0;
- ``<habitat>_shape_<Feature>``: PyRadiomics shape features (they depend on the mask only);
- ``<habitat>_<sequence>_<imageType>_<class>_<Feature>``, e.g. ``ET_t1ce_original_firstorder_Mean``.

Each subject's images are read and preprocessed once, then cropped once to the whole-tumour
bounding box plus padding. For ``Original`` features this changes nothing (PyRadiomics crops to the
habitat's own bounding box anyway, and our normalisation used the whole brain before cropping); it
is skipped when the PyRadiomics parameters turn on ``normalize`` or resampling, whose results would
depend on the crop. Filtered image types (LoG, wavelet) see the padded crop: their values near the
border depend on ``crop_padding``, which is part of the cache key.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from radfusion.data.cohort import Cohort, CohortError, Subject
from radfusion.data.habitats import allowed_labels, habitat_masks
from radfusion.data.preprocess import bounding_box, crop, load_preprocessed
from radfusion.radiomics.settings import FeatureSettings

log = logging.getLogger(__name__)

_NAN = float("nan")


# --------------------------------------------------------------------------------------------
# PyRadiomics plumbing
# --------------------------------------------------------------------------------------------

class _CountingHandler(logging.Handler):
    """Counts PyRadiomics log records by message instead of printing each one."""

    def __init__(self, counts: Counter) -> None:
        super().__init__(level=logging.WARNING)
        self.counts = counts

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"radiomics {record.levelname}: {record.getMessage()[:200]}"] += 1


def _quiet_pyradiomics() -> None:
    """Stop PyRadiomics from printing: its stderr handler shows errors only, the logger no longer
    builds INFO records (several per call) that nobody reads, and nothing propagates to the root
    logger (Hydra's handlers would print e.g. the GLCM "Sum Average" warning once per region x
    sequence). Warnings still reach :func:`_capture_warnings`, which counts them."""
    import radiomics

    radiomics.setVerbosity(logging.ERROR)
    rlog = logging.getLogger("radiomics")
    rlog.setLevel(logging.WARNING)
    rlog.propagate = False


@contextmanager
def _capture_warnings() -> Iterator[Counter]:
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

    _quiet_pyradiomics()
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


def _execute(extractor, image: sitk.Image | str | Path, mask: sitk.Image | str | Path,
             label: int) -> dict[str, float]:
    # PyRadiomics only recognises str paths (not pathlib) and sitk.Image objects.
    image = str(image) if isinstance(image, Path) else image
    mask = str(mask) if isinstance(mask, Path) else mask
    result = extractor.execute(image, mask, label=label)
    # Feature values come back as 0-d numpy arrays; diagnostics are strings/tuples.
    return {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}


def extract_region(image: sitk.Image | str | Path, mask: sitk.Image | str | Path,
                   params: dict | str | Path, label: int = 1) -> dict[str, float]:
    """PyRadiomics features of one image/mask pair, diagnostics dropped.

    Args:
        image: intensity image (sitk.Image or file path).
        mask: label image on the same grid (sitk.Image or file path).
        params: PyRadiomics parameter dict or YAML/JSON file.
        label: label value of the region in ``mask``.

    Returns:
        ``{"<imageType>_<class>_<Feature>": value}``, e.g. ``original_firstorder_Mean``.
    """
    return _execute(build_extractor(params), image, mask, label)


def _params_key(params: dict | str | Path) -> str:
    if isinstance(params, (str, Path)):
        return "file:" + hashlib.sha1(Path(params).read_bytes()).hexdigest()
    return json.dumps(params, sort_keys=True, default=str)


_EXTRACTORS: dict[str, tuple[Any, Any, bool]] = {}
_TEMPLATES: dict[str, tuple[list[str], list[str]]] = {}


def _split_extractors(params: dict | str | Path) -> tuple[Any, Any, bool]:
    """(shape extractor or None, other-classes extractor or None, cropping allowed), per process.

    Shape depends on the mask only, so it runs once per habitat on the Original image; the other
    classes run per sequence. Both come from the same validated parameters.
    """
    key = _params_key(params)
    if key not in _EXTRACTORS:
        base = build_extractor(params)
        shape_classes = {k: v for k, v in base.enabledFeatures.items() if k.startswith("shape")}
        other_classes = {k: v for k, v in base.enabledFeatures.items() if not k.startswith("shape")}
        shape_ex = other_ex = None
        if shape_classes:
            shape_ex = copy.deepcopy(base)
            shape_ex.enabledFeatures = shape_classes
            # Otherwise PyRadiomics would still compute every enabled filter just to find no classes.
            shape_ex.enabledImagetypes = {"Original": {}}
        if other_classes:
            other_ex = copy.deepcopy(base)
            other_ex.enabledFeatures = other_classes
        s = base.settings
        # PyRadiomics resamples only when both are set; normalisation acts on whatever it is given.
        resamples = s.get("resampledPixelSpacing") is not None and s.get("interpolator") is not None
        _EXTRACTORS[key] = (shape_ex, other_ex, not (s.get("normalize", False) or resamples))
    return _EXTRACTORS[key]


def _column_template(params: dict | str | Path) -> tuple[list[str], list[str]]:
    """PyRadiomics feature names (shape, other) these parameters produce, from a small phantom.

    Running the real extractor on a 32³ noise image with a ball mask gives exactly the names of
    any configuration (filters, feature subsets) without re-implementing PyRadiomics' naming.
    """
    key = _params_key(params)
    if key not in _TEMPLATES:
        shape_ex, other_ex, _ = _split_extractors(params)
        rng = np.random.default_rng(0)
        arr = (rng.normal(0.0, 100.0, (32, 32, 32))).astype(np.float32)
        zz, yy, xx = np.mgrid[:32, :32, :32]
        ball = ((zz - 16) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2 <= 64).astype(np.uint8)
        image, mask = sitk.GetImageFromArray(arr), sitk.GetImageFromArray(ball)
        with _capture_warnings():
            shape = list(_execute(shape_ex, image, mask, 1)) if shape_ex else []
            other = list(_execute(other_ex, image, mask, 1)) if other_ex else []
        _TEMPLATES[key] = (shape, other)
    return _TEMPLATES[key]


def _shape_column(habitat: str, key: str) -> str:
    # "original_shape_MeshVolume" -> "WT_shape_MeshVolume": shape has no image type or sequence.
    return f"{habitat}_{key.removeprefix('original_')}"


def _habitat_columns(habitat: str, sequences: list[str], template: tuple[list[str], list[str]]) -> list[str]:
    shape, other = template
    per_sequence = [f"{habitat}_{seq}_{k}" for seq in sequences for k in other]
    return [_shape_column(habitat, k) for k in shape] + per_sequence


# --------------------------------------------------------------------------------------------
# One subject
# --------------------------------------------------------------------------------------------

def extract_subject(subject: Subject, settings: FeatureSettings,
                    label_convention: str | dict = "brats2021") -> tuple[dict[str, float], dict]:
    """All habitat features of one subject.

    Returns:
        ``(features, diagnostics)``. ``features`` maps column name to value (see the module doc);
        an empty habitat has the same columns as a non-empty one, all NaN. ``diagnostics`` holds
        ``voxels`` (per habitat, after resampling), ``bbox`` (``[[start, stop], ...]`` in (z, y, x)
        voxels of the resampled grid, None if not cropped), ``seconds`` and ``warnings``
        (message -> count).

    Raises:
        CohortError: unreadable file, geometry mismatch, missing segmentation, labels outside the
            convention (the message names subject and file).
    """
    sid = subject.subject_id
    t0 = time.perf_counter()
    params = settings.pyradiomics_params
    shape_ex, other_ex, crop_ok = _split_extractors(params)
    template = _column_template(params)
    with _capture_warnings() as counts:
        if subject.seg is None:
            raise CohortError(f"subject {sid}: no segmentation; habitat features need one")
        images, seg = load_preprocessed(subject, settings.spacing, settings.normalize,
                                        settings.normalize_scale, settings.sequences)
        seg_arr = sitk.GetArrayFromImage(seg)
        bad = sorted(set(np.unique(seg_arr).tolist()) - allowed_labels(label_convention))
        if bad:
            raise CohortError(f"subject {sid}: segmentation {subject.seg} has labels {bad} outside the "
                              f"{label_convention} convention {sorted(allowed_labels(label_convention))}")
        masks = habitat_masks(seg_arr, label_convention, settings.habitats)
        wt = seg_arr > 0  # every supported habitat lies inside the whole tumour
        box = None
        ref = seg
        if crop_ok and wt.any():
            box = bounding_box(wt, settings.crop_padding)
            images = {seq: crop(img, box) for seq, img in images.items()}
            ref = crop(seg, box)
            masks = {h: m[box] for h, m in masks.items()}

        features: dict[str, float] = {}
        voxels: dict[str, int] = {}
        for habitat in settings.habitats:
            m = masks[habitat]
            n = int(np.count_nonzero(m))
            voxels[habitat] = n
            values = dict.fromkeys(_habitat_columns(habitat, settings.sequences, template), _NAN)
            empty = n < settings.min_voxels
            if not empty:
                mask_img = sitk.GetImageFromArray(m.astype(np.uint8))
                mask_img.CopyInformation(ref)
                try:
                    if shape_ex is not None:
                        first = images[settings.sequences[0]]
                        for k, v in _execute(shape_ex, first, mask_img, 1).items():
                            values[_shape_column(habitat, k)] = v
                    if other_ex is not None:
                        for seq in settings.sequences:
                            for k, v in _execute(other_ex, images[seq], mask_img, 1).items():
                                values[f"{habitat}_{seq}_{k}"] = v
                except ValueError as err:
                    # PyRadiomics' checkMask rejects e.g. a region thinner than minimumROIDimensions;
                    # such a habitat carries no usable texture, like an empty one.
                    counts[f"{habitat}: PyRadiomics rejected the region ({err}); treated as empty"] += 1
                    values = dict.fromkeys(values, _NAN)
                    empty = True
            features[f"{habitat}_voxels"] = float(n)
            features[f"{habitat}_empty"] = 1.0 if empty else 0.0
            features.update(values)

    diagnostics = {
        "voxels": voxels,
        "bbox": None if box is None else [[s.start, s.stop] for s in box],
        "seconds": round(time.perf_counter() - t0, 3),
        "warnings": dict(counts),
    }
    return features, diagnostics


# --------------------------------------------------------------------------------------------
# A cohort, in parallel, cached
# --------------------------------------------------------------------------------------------

def input_checksum(subject: Subject, sequences: list[str], label_convention: str | dict = "brats2021",
                   chunk_size: int = 1 << 20) -> str:
    """SHA-1 of the subject's image and segmentation file contents (read in 1 MiB chunks).

    The label convention enters too, since the same files give other habitats under another one.
    """
    h = hashlib.sha1(json.dumps(label_convention, sort_keys=True).encode())
    paths = [(seq, subject.images.get(seq)) for seq in sequences] + [("seg", subject.seg)]
    for name, path in paths:
        h.update(f"|{name}|".encode())
        if path is None:
            continue
        with open(path, "rb") as f:
            while chunk := f.read(chunk_size):
                h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    # Write beside the target, then rename: a killed process leaves a stray .tmp, never half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _cache_path(key_dir: Path, subject_id: str, checksum: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", subject_id)
    return key_dir / f"{safe}-{checksum}.json"


def _process_subject(subject: Subject, settings: FeatureSettings, label_convention: str | dict,
                     key_dir: Path, sitk_threads: int | None = None) -> dict:
    """Cached extraction of one subject; never raises (failures come back as data)."""
    if sitk_threads is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(sitk_threads)
    sid = subject.subject_id
    out = {"subject_id": sid, "status": "failed", "features": None, "diagnostics": {}, "error": ""}
    try:
        checksum = input_checksum(subject, settings.sequences, label_convention)
    except OSError as err:
        out["error"] = f"subject {sid}: cannot read {err.filename}: {err.strerror}"
        return out
    path = _cache_path(key_dir, sid, checksum)
    if path.exists():
        try:
            payload = json.loads(path.read_text())
            out.update(status="cached", features=payload["features"], diagnostics=payload["diagnostics"])
            return out
        except (OSError, ValueError, KeyError) as err:
            log.warning("subject %s: unreadable cache file %s (%s); recomputing", sid, path, err)
    try:
        features, diagnostics = extract_subject(subject, settings, label_convention)
    except CohortError as err:
        out["error"] = str(err)
        return out
    except Exception as err:  # noqa: BLE001 - one bad subject must not end the cohort
        out["error"] = (f"subject {sid}: feature extraction failed ({type(err).__name__}: {err}); "
                        f"inputs: segmentation {subject.seg}")
        return out
    payload = {"subject_id": sid, "checksum": checksum, "features": features, "diagnostics": diagnostics}
    _atomic_write(path, json.dumps(payload))
    out.update(status="computed", features=features, diagnostics=diagnostics)
    return out


def _column_order(columns: set[str], settings: FeatureSettings) -> list[str]:
    """Habitat (settings order), then voxels/empty, shape, sequences (settings order), then name."""
    hab_rank = {h: i for i, h in enumerate(settings.habitats)}
    seq_rank = {s: i for i, s in enumerate(settings.sequences)}

    def key(col: str) -> tuple:
        hab, _, rest = col.partition("_")
        if hab not in hab_rank:
            return (len(hab_rank), 0, 0, col)
        if rest in ("voxels", "empty"):
            return (hab_rank[hab], 0, 0, rest)
        first, _, _ = rest.partition("_")
        if first in seq_rank:
            return (hab_rank[hab], 2, seq_rank[first], rest)
        return (hab_rank[hab], 1, 0, rest)

    return sorted(columns, key=key)


def _diagnostics_row(result: dict) -> dict:
    diag = result["diagnostics"] or {}
    warns = diag.get("warnings", {}) or {}
    row = {"subject_id": result["subject_id"], "status": result["status"], "seconds": diag.get("seconds"),
           "n_warnings": int(sum(warns.values())), "bbox": json.dumps(diag.get("bbox")),
           "warnings": json.dumps(dict(Counter(warns).most_common(5))), "error": result["error"]}
    for hab, n in (diag.get("voxels") or {}).items():
        row[f"voxels_{hab}"] = n
    return row


def extract_cohort(cohort: Cohort, settings: FeatureSettings, cache_dir: str | Path,
                   n_jobs: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Habitat features of every subject: one row per subject (index ``subject_id``).

    Per-subject results are cached in ``cache_dir/<settings.cache_key()>/<subject_id>-<sha1>.json``
    (sha1 of the input files), so a rerun or a resumed run recomputes only what is missing.
    ``features.parquet``, ``diagnostics.csv`` and ``failures.csv`` are written beside them.

    A failing subject is logged, recorded in ``failures.csv`` and in ``df.attrs["failures"]``
    (``{subject_id: message}``) and left out of the table; the others are kept.

    Args:
        cohort: the cohort (its ``label_convention`` defines the habitats).
        settings: feature settings.
        cache_dir: root of the feature cache.
        n_jobs: worker processes (joblib/loky); None uses ``settings.n_jobs``; -1 = all cores.
        progress: show a tqdm progress bar.
    """
    from joblib import Parallel, delayed, effective_n_jobs
    from tqdm.auto import tqdm

    ids = cohort.ids
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise CohortError(f"duplicate subject_id(s) {dup[:5]}: give each timepoint its own id")
    n_jobs = effective_n_jobs(settings.n_jobs if n_jobs is None else n_jobs)
    key_dir = Path(cache_dir) / settings.cache_key()
    key_dir.mkdir(parents=True, exist_ok=True)
    # Validate the parameters here, once, rather than as one failure per subject.
    _column_template(settings.pyradiomics_params)
    conv = cohort.label_convention

    if n_jobs == 1 or len(cohort) <= 1:
        results: Iterator[dict] = (_process_subject(s, settings, conv, key_dir) for s in cohort.subjects)
    else:
        # One SimpleITK thread per worker: the workers already use every core.
        threads = max(1, (os.cpu_count() or 1) // n_jobs)
        results = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator_unordered")(
            delayed(_process_subject)(s, settings, conv, key_dir, threads) for s in cohort.subjects)

    by_id: dict[str, dict] = {}
    bar = tqdm(results, total=len(cohort), desc="habitat radiomics", unit="subject", disable=not progress)
    for result in bar:
        by_id[result["subject_id"]] = result
        if result["status"] == "failed":
            log.error("radiomics: skipping %s", result["error"])

    ordered = [by_id[i] for i in ids]
    ok = [r for r in ordered if r["status"] != "failed"]
    failures = {r["subject_id"]: r["error"] for r in ordered if r["status"] == "failed"}
    columns: set[str] = set()
    for r in ok:
        columns.update(r["features"])
    index = pd.Index([r["subject_id"] for r in ok], name="subject_id")
    df = pd.DataFrame([r["features"] for r in ok], index=index, columns=_column_order(columns, settings),
                      dtype=float)
    df.attrs["failures"] = failures

    pd.DataFrame([_diagnostics_row(r) for r in ordered]).to_csv(key_dir / "diagnostics.csv", index=False)
    pd.DataFrame({"subject_id": list(failures), "error": list(failures.values())}).to_csv(
        key_dir / "failures.csv", index=False)
    tmp = key_dir / f".features.parquet.{os.getpid()}.tmp"
    df.to_parquet(tmp)
    os.replace(tmp, key_dir / "features.parquet")

    n_warn = Counter()
    for r in ok:
        n_warn.update((r["diagnostics"] or {}).get("warnings", {}) or {})
    counts = Counter(r["status"] for r in ordered)
    log.info("radiomics: %d computed, %d from cache, %d failed (%s)", counts["computed"], counts["cached"],
             counts["failed"], key_dir)
    if n_warn:
        log.warning("radiomics: %d warnings in %d kinds; most common: %s (details in %s)",
                    sum(n_warn.values()), len(n_warn), n_warn.most_common(3), key_dir / "diagnostics.csv")
    return df
