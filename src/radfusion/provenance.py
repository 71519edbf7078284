"""``manifest.json``: what a run used, written into every run folder (train, predict, extract, evaluate).

A manifest answers "why does this number differ from last time?" without the run's console: the
command line and Hydra overrides, the git commit (and whether the tree had uncommitted changes), the
versions of the libraries that compute values, the machine, the seeds, the cohort (its source, its
file or folder and a content hash, whether it is synthetic), a checksum of every input file of every
subject, the feature-settings hash (the radiomics cache key), the splits file and its hash, the
subjects left out and why, and the settings the run actually used. Keys and their meaning are listed
in ``docs/provenance.md``; the report (:mod:`radfusion.evaluation`) states only what a manifest says.

This module sits beside :mod:`radfusion.cache` (it uses its hashing and atomic writes) and imports no
pipeline stage: a cohort, a prepared cohort or a datamodule is read through its attributes.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from radfusion import __version__
from radfusion.cache import atomic_write_text, chunks_sha1, file_sha1, settings_hash

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
KINDS = ("train", "predict", "extract", "evaluate")
#: Version of the manifest's layout (bump when a key changes meaning).
SCHEMA = 1

#: Manifest name -> distribution names to try (the first installed one wins).
LIBRARIES: dict[str, tuple[str, ...]] = {
    "radfusion": ("radfusion",), "pyradiomics": ("pyradiomics",), "SimpleITK": ("SimpleITK", "simpleitk"),
    "torch": ("torch",), "monai": ("monai",), "pytorch_lightning": ("pytorch-lightning", "lightning"),
    "sklearn": ("scikit-learn",), "sksurv": ("scikit-survival",), "numpy": ("numpy",), "pandas": ("pandas",),
    "hydra": ("hydra-core",), "omegaconf": ("omegaconf",), "wandb": ("wandb",), "nnunetv2": ("nnunetv2",),
}
#: Recorded only when installed.
OPTIONAL_LIBRARIES: dict[str, tuple[str, ...]] = {"shap": ("shap",), "captum": ("captum",), "xgboost": ("xgboost",)}


def _version(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def library_versions() -> dict[str, str]:
    """Installed versions (from package metadata: nothing heavy is imported), ``python`` included.

    A required library that is not installed reads ``"not installed"``; optional ones (shap, captum,
    xgboost) appear only when installed."""
    versions = {"python": platform.python_version()}
    for key, names in LIBRARIES.items():
        versions[key] = _version(names) or "not installed"
    for key, names in OPTIONAL_LIBRARIES.items():
        found = _version(names)
        if found:
            versions[key] = found
    return versions


def _git(args: list[str], root: Path) -> str | None:
    try:
        res = subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None
    return res.stdout if res.returncode == 0 else None


def git_state(root: Path | None = None) -> dict:
    """``{"commit", "dirty"}`` of the git work tree holding ``root`` (default: this source file).

    ``dirty`` is true when tracked files differ from the commit or untracked, not-ignored files
    exist; both values are None outside a repository or without git. Read-only: ``--no-optional-locks``
    keeps ``git status`` from touching the index while another process commits."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent
    if not root.is_dir():
        root = root.parent
    commit = _git(["rev-parse", "HEAD"], root)
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git(["status", "--porcelain"], root)
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def platform_info() -> dict:
    """Python, operating system, machine, CPU count, and torch's device when torch is already imported
    (a manifest never imports torch or initialises CUDA just to describe the machine)."""
    info: dict[str, Any] = {"python": sys.version.split()[0], "implementation": platform.python_implementation(),
                            "system": f"{platform.system()} {platform.release()}", "machine": platform.machine(),
                            "node": platform.node(), "cpu_count": os.cpu_count()}
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            cuda = bool(torch.cuda.is_available())
            info["torch_threads"] = torch.get_num_threads()
            info["cuda_available"] = cuda
            if cuda:
                info["cuda_device"] = torch.cuda.get_device_name(0)
                info["cuda_version"] = torch.version.cuda
        except Exception as err:  # noqa: BLE001 - a broken driver must not stop a run from being recorded
            info["cuda_error"] = str(err)
    return info


def _plain(cfg: Any) -> Any:
    """A DictConfig / ListConfig as plain containers (resolved); anything else unchanged."""
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a core dependency
        return cfg
    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        try:
            node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
        except Exception:  # noqa: BLE001 - an unresolvable interpolation reads as absent
            return default
    return default if node is None else node


def command_and_overrides() -> tuple[list[str], list[str]]:
    """``sys.argv`` and, inside a Hydra app, the task overrides Hydra parsed (``[]`` outside one)."""
    overrides: list[str] = []
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            overrides = [str(o) for o in HydraConfig.get().overrides.task]
    except Exception:  # noqa: BLE001 - outside Hydra, or another Hydra version
        overrides = []
    return [sys.executable, *sys.argv], overrides


# --------------------------------------------------------------------------------------------
# The cohort
# --------------------------------------------------------------------------------------------


def _cohort_parts(obj: Any) -> tuple[Any, Any, Any]:
    """``(cohort, prepared, datamodule)`` from a Cohort, a PreparedCohort or a datamodule (duck-typed)."""
    if obj is None:
        return None, None, None
    prepared = getattr(obj, "prepared", None)
    if prepared is not None and hasattr(prepared, "failures"):  # a datamodule
        return prepared.cohort, prepared, obj
    if hasattr(obj, "failures") and hasattr(obj, "cohort"):  # a PreparedCohort
        return obj.cohort, obj, None
    return obj, None, None


def subject_inputs(cohort: Any, known: Mapping[str, str] | None = None) -> dict[str, dict[str, str]]:
    """``{subject: {sequence | "seg" | "brainmask": sha1}}`` of every input file of the cohort's subjects
    (:func:`radfusion.cache.file_sha1`). ``known`` (path -> sha1, e.g. the extraction's checksums of
    the same files) is reused, so a file the radiomics cache already hashed is not read again."""
    known = dict(known or {})
    out: dict[str, dict[str, str]] = {}
    for subject in getattr(cohort, "subjects", None) or []:
        files = dict(getattr(subject, "images", {}) or {})
        for name in ("seg", "brainmask"):
            if getattr(subject, name, None) is not None:
                files[name] = getattr(subject, name)
        sums = {}
        for name, path in files.items():
            key = str(path)
            if key not in known:
                try:
                    known[key] = file_sha1(path)
                except OSError as err:
                    known[key] = f"unreadable: {err.strerror or err}"
            sums[name] = known[key]
        out[str(subject.subject_id)] = sums
    return out


def _hash_or_none(path: Any) -> str | None:
    try:
        return file_sha1(path) if path and Path(path).is_file() else None
    except OSError:
        return None


def _is_synthetic(source: str | None, path: Path | None) -> tuple[bool, str]:
    if source == "synthetic":
        return True, "cohort.source is synthetic"
    folder = None if path is None else (path if path.is_dir() else path.parent)
    if folder is not None and (folder / "ground_truth.csv").is_file() and (folder / "params.json").is_file():
        return True, f"{folder} holds the synthetic generator's ground_truth.csv and params.json"
    return False, "not generated by radfusion.synthetic"


def cohort_record(cohort_cfg: Any, cohort: Any, inputs: Mapping[str, Mapping[str, str]]) -> dict:
    """The manifest's ``cohort`` block: source, path, content hash and what it was computed over."""
    c = _plain(cohort_cfg) or {}
    source = c.get("source")
    path = c.get("features") if source == "feature_table" else c.get("path")
    if path is None and getattr(cohort, "root", None) is not None:
        path = cohort.root
    p = Path(path) if path else None
    record: dict[str, Any] = {"source": source, "path": None if p is None else str(p)}
    if p is not None and p.is_dir() and (p / "manifest.csv").is_file():  # the synthetic cohort's folder
        record["manifest"] = str(p / "manifest.csv")
        record["content_sha1"], record["content_sha1_of"] = file_sha1(p / "manifest.csv"), "manifest.csv (file sha1)"
    elif p is not None and p.is_file():
        record["content_sha1"], record["content_sha1_of"] = file_sha1(p), "the file (sha1 of its bytes)"
    elif inputs:
        record["content_sha1"] = inputs_sha1(inputs)
        record["content_sha1_of"] = "the folder: sha1 over every used subject's input-file checksums (inputs_sha1)"
    else:
        record["content_sha1"], record["content_sha1_of"] = None, "nothing readable"
    clinical = c.get("clinical")
    record["clinical"] = None if not clinical else str(clinical)
    record["clinical_sha1"] = _hash_or_none(clinical)
    record["inputs_sha1"] = inputs_sha1(inputs) if inputs else None
    record["synthetic"], record["synthetic_because"] = _is_synthetic(source, p)
    if source == "feature_table" and p is not None and p.is_file():
        _inherit_from_extraction(record, p)
    if source == "synthetic":
        record["generator"] = c.get("synthetic")
    record["label_convention"] = getattr(cohort, "label_convention", c.get("label_convention"))
    record["sequences"] = list(getattr(cohort, "sequences", None) or c.get("sequences") or [])
    if c.get("provenance") is not None:  # what a feature table's user declared about its preprocessing
        record["provenance"] = c.get("provenance")
    return record


def _inherit_from_extraction(record: dict, table: Path) -> None:
    """A feature table written by ``extract_features.py`` has that run's manifest beside it: when the
    table is unchanged (same sha1), the cohort it came from (and whether it was synthetic) is known."""
    source = read_manifest(table.parent)
    extra = (source or {}).get("extra") or {}
    if (source or {}).get("kind") != "extract" or extra.get("features_parquet_sha1") != record["content_sha1"]:
        return
    origin = source.get("cohort") or {}
    record["derived_from"] = {"manifest": str(table.parent / MANIFEST), "cohort": origin,
                              "feature_settings_hash": source.get("feature_settings_hash"),
                              "settings": source.get("settings")}
    if origin.get("synthetic"):
        record["synthetic"] = True
        record["synthetic_because"] = f"extracted from a synthetic cohort ({table.parent / MANIFEST})"


def inputs_sha1(inputs: Mapping[str, Mapping[str, str]]) -> str:
    """One checksum over per-subject input checksums (order-independent: sorted by subject and name)."""
    return chunks_sha1(f"{sid}|{name}|{sha}\n" for sid in sorted(inputs) for name, sha in sorted(inputs[sid].items()))


# --------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------


def _settings(cfg: Any, cohort_cfg: Mapping, prepared: Any, dm: Any) -> dict:
    """What the run used: None for a block the run did not use (no radiomics computed, no images)."""
    table = cohort_cfg.get("source") == "feature_table"
    radiomics = prepared is not None and getattr(prepared, "features", None) is not None
    images = prepared is not None and getattr(prepared, "roi_paths", None) is not None
    if dm is not None:
        radiomics, images = bool(getattr(dm, "use_radiomics", radiomics)), bool(getattr(dm, "use_images", images))
    if prepared is None and dm is None:  # an extraction (a Cohort) computes radiomics, builds no ROI
        radiomics, images = _get(cfg, "features") is not None, False
    features = _plain(_get(cfg, "data.features") or _get(cfg, "features"))
    computed = radiomics and not table
    if computed and isinstance(features, dict):
        preprocessing = {k: features.get(k) for k in ("spacing", "normalize", "normalize_scale", "crop_padding",
                                                      "min_voxels", "habitats", "sequences")}
        preprocessing.update({"bin_width": _get(features, "params.setting.binWidth"),
                              "bin_count": _get(features, "params.setting.binCount"),
                              "image_types": sorted((_get(features, "params.imageType") or {}).keys()),
                              "brain_mask": cohort_cfg.get("brain_mask", "auto"),
                              "geometry_tolerance": cohort_cfg.get("geometry_tolerance")})
    elif table:
        preprocessing = {"computed_by_radfusion": False, "as_supplied_in": cohort_cfg.get("features"),
                         "declared": cohort_cfg.get("provenance")}
    else:
        preprocessing = None
    roi = _plain(_get(cfg, "data.roi")) if images else None
    if roi is not None:
        roi = {**roi, "brain_mask": cohort_cfg.get("brain_mask", "auto")}
    split = _plain(getattr(dm, "split_cfg", None) or _get(cfg, "data.split"))
    return {"features": features if computed else None, "roi": roi, "preprocessing": preprocessing,
            "processing": _plain(getattr(dm, "processing_cfg", None) or _get(cfg, "data.processing")), "split": split,
            "uses_radiomics": bool(radiomics), "uses_images": bool(images)}


def build_manifest(kind: str, cfg: Any = None, *, cohort: Any = None, extra: dict | None = None,
                   feature_settings: Any = None, splits_file: str | Path | None = None,
                   excluded: Mapping[str, str] | None = None, file_hashes: Mapping[str, str] | None = None) -> dict:
    """The manifest of one run (see ``docs/provenance.md`` for every key).

    Args:
        kind: ``train``, ``predict``, ``extract`` or ``evaluate``.
        cfg: the run's config (DictConfig or dict); its ``data.cohort`` (or ``cohort``) block names the cohort.
        cohort: a validated ``Cohort``, a ``PreparedCohort`` or a datamodule holding one (read through
            attributes): per-subject input checksums, exclusions, the splits file and feature settings.
        extra: anything the caller adds (stored under ``extra``).
        feature_settings: an object with ``cache_key()`` (``FeatureSettings``); default: the datamodule's.
        splits_file: the splits file used; default: the datamodule's ``splits_file``.
        excluded: ``{subject: reason}``; default: ``PreparedCohort.failures`` or ``Cohort.excluded``.
        file_hashes: path -> sha1 already computed (default: the extraction's, in the feature table's attrs).
    """
    if kind not in KINDS:
        raise ValueError(f"manifest kind must be one of {list(KINDS)}, got {kind!r}")
    command, overrides = command_and_overrides()
    the_cohort, prepared, dm = _cohort_parts(cohort)
    cohort_cfg = _plain(_get(cfg, "data.cohort") or _get(cfg, "cohort")) or {}
    if not isinstance(cohort_cfg, dict):
        cohort_cfg = {}
    if file_hashes is None and prepared is not None and getattr(prepared, "features", None) is not None:
        file_hashes = getattr(prepared.features, "attrs", {}).get("file_sha1")
    inputs = subject_inputs(the_cohort, file_hashes)
    if excluded is None:
        excluded = prepared.failures if prepared is not None else getattr(the_cohort, "excluded", None)
    if feature_settings is None and dm is not None:
        feature_settings = getattr(dm, "feature_settings", None)
    if splits_file is None and dm is not None:
        splits_file = getattr(dm, "splits_file", None)
    fs_hash = None
    if feature_settings is not None and hasattr(feature_settings, "cache_key"):
        fs_hash = feature_settings.cache_key()
    elif _get(cfg, "features") is not None:
        fs_hash = "config:" + settings_hash(_plain(_get(cfg, "features")))
    settings = _settings(cfg, cohort_cfg, prepared, dm) if cfg is not None else {}
    if not settings.get("uses_radiomics", True) or cohort_cfg.get("source") == "feature_table":
        fs_hash = None
    n_subjects = len(getattr(prepared, "ids", None) or getattr(the_cohort, "ids", None) or []) if the_cohort else None
    record = {**cohort_record(cohort_cfg, the_cohort, inputs), "n_subjects": n_subjects} if cohort_cfg or the_cohort \
        else None
    trainer = {k: _plain(_get(cfg, f"trainer.{k}")) for k in ("accelerator", "devices", "precision", "strategy")} \
        if _get(cfg, "trainer") is not None else None

    return {
        "schema": SCHEMA, "kind": kind, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "radfusion_version": __version__, "command": command, "overrides": overrides,
        "experiment": _get(cfg, "task_name"), "git": git_state(), "versions": library_versions(),
        "platform": {**platform_info(), "trainer": trainer},
        "seeds": {"seed": _get(cfg, "seed"), "split_seed": _get(cfg, "data.split.seed")},
        "cohort": record,
        "inputs": inputs, "feature_settings_hash": fs_hash,
        "splits_file": None if splits_file is None else str(splits_file), "splits_sha1": _hash_or_none(splits_file),
        "excluded": dict(excluded or {}), "settings": settings, "extra": dict(extra or {}),
    }


def write_manifest(out_dir: str | Path, manifest: dict) -> Path:
    """Write ``out_dir/manifest.json`` atomically; returns its path."""
    path = Path(out_dir) / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=1, default=str) + "\n")
    log.info("provenance: %s", path)
    return path


def read_manifest(run_dir: str | Path) -> dict | None:
    """The manifest of a run folder (or the file itself), or None when there is none or it is unreadable."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
