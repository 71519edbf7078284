"""Segment the subjects of a cohort that have no mask, and record what made each mask.

``segment_manifest`` reads a manifest CSV, runs an :class:`NNUNetSegmenter` on every row whose ``seg``
cell is empty (or on every row with ``only_missing=False``), writes the masks
(``<seg_dir>/<subject_id>_seg.nii.gz``, the cohort's label convention, the grid of the subject's
images) and writes an updated manifest: ``seg`` filled in, plus provenance columns

``seg_model, seg_folds, seg_checkpoint, seg_checkpoint_sha1, seg_trainer, seg_configuration,
seg_label_map, seg_tool, seg_device, seg_seconds``

(empty for rows whose masks were given). Rows that had masks are left exactly as they were; with
``only_missing=False`` their given mask moves to a ``seg_reference`` column (what
``scripts/segmentation_quality.py`` compares against). A failing subject is logged and listed in
``failures``; the others are still written. A mask is reused on a rerun when its sidecar
``<subject_id>_seg.json`` records the same checkpoint, label map and input files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from radfusion.cache import atomic_path, atomic_write_text, files_sha1
from radfusion.cohort.readers import cohort_from_config, read_manifest
from radfusion.cohort.subject import SEQUENCES, Cohort, CohortError
from radfusion.cohort.validate import validate_subject
from radfusion.segmentation.labels import SegmentationError
from radfusion.segmentation.nnunet import NNUNetSegmenter

log = logging.getLogger(__name__)

#: Columns added to the manifest, in this order.
PROVENANCE_COLUMNS: tuple[str, ...] = (
    "seg_model", "seg_folds", "seg_checkpoint", "seg_checkpoint_sha1", "seg_trainer", "seg_configuration",
    "seg_label_map", "seg_tool", "seg_device", "seg_seconds",
)
_PATH_COLUMNS = (*SEQUENCES, "seg", "seg_reference")


@dataclass
class SegmentationRun:
    """Outcome of :func:`segment_cohort` (``seconds`` per segmented subject; ``status`` per subject:
    ``given`` (had a mask, untouched), ``predicted``, ``reused`` (from an earlier run) or ``failed``)."""

    manifest: Path
    table: pd.DataFrame
    status: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()


def _rebase(table: pd.DataFrame, src: Path, dst: Path) -> pd.DataFrame:
    """Path cells relative to ``src`` → relative to ``dst`` (unchanged when the folders are the same)."""
    if src.resolve() == dst.resolve():
        return table
    table = table.copy()
    for col in _PATH_COLUMNS:
        if col in table:
            table[col] = [_rel(src / c, dst) if str(c).strip() else c for c in table[col]]
    return table


def _table_from_cohort(cohort: Cohort, base: Path) -> pd.DataFrame:
    """Manifest rows (paths relative to ``base``) for a cohort read from a folder layout."""
    rows = []
    keep = [c for c in ("site", "age", "sex", "idh", "mgmt", "codeletion", "grade", "os_days", "os_event")
            if c in cohort.clinical.columns]
    for s in cohort.subjects:
        row = {"subject_id": s.subject_id,  # a sequence the subject lacks: an empty cell, as a manifest has it
               **{q: _rel(s.images[q], base) if q in s.images else "" for q in cohort.sequences},
               "seg": _rel(s.seg, base) if s.seg is not None else ""}
        for c in keep:
            v = cohort.clinical.at[s.subject_id, c]
            row[c] = "" if pd.isna(v) else (int(v) if isinstance(v, float) and float(v).is_integer() else v)
        rows.append(row)
    return pd.DataFrame(rows).astype(str)


def _write_mask(mask: sitk.Image, path: Path) -> None:
    with atomic_path(path, suffix=".nii.gz") as tmp:  # a mask exists whole or not at all
        sitk.WriteImage(mask, str(tmp), True)


def _write_manifest(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def segment_cohort(cohort: Cohort, segmenter: NNUNetSegmenter, output_manifest: str | Path, seg_dir: str | Path,
                   table: pd.DataFrame | None = None, table_dir: str | Path | None = None, only_missing: bool = True,
                   overwrite: bool = False, tolerance: float = 1e-3, progress: bool = True) -> SegmentationRun:
    """Segment ``cohort``'s subjects without a mask (all with ``only_missing=False``) and write a manifest.

    Args:
        cohort: the cohort; its ``label_convention`` is the convention masks are written in.
        segmenter: the model.
        output_manifest: the manifest CSV to write (paths in it relative to its folder).
        seg_dir: folder of the predicted masks.
        table: the input manifest's rows as text, aligned with ``cohort.subjects`` (None: built from
            the cohort, for folder layouts); ``table_dir`` is the folder its paths are relative to.
        overwrite: predict again even where an earlier run's mask could be reused.
        tolerance: geometry tolerance between a subject's sequences (mm / direction cosines).
    """
    from tqdm.auto import tqdm

    out_path = Path(output_manifest)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    seg_dir = Path(seg_dir)
    seg_dir.mkdir(parents=True, exist_ok=True)
    if table is None:
        table = _table_from_cohort(cohort, out_path.parent)
    else:
        if len(table) != len(cohort):
            raise ValueError(f"manifest table has {len(table)} rows, cohort {len(cohort)} subjects")
        table = _rebase(table.astype(str), Path(table_dir or out_path.parent), out_path.parent)
    for col in ("seg", *PROVENANCE_COLUMNS):
        if col not in table:
            table[col] = ""
    run = SegmentationRun(out_path, table)
    todo = [i for i, s in enumerate(cohort.subjects) if s.seg is None or not only_missing]
    for s in cohort.subjects:
        if s.seg is not None and only_missing:
            run.status[s.subject_id] = "given"
    if todo:
        segmenter.load()  # a model nnU-Net cannot load is one error, not one per subject
    prov = segmenter.provenance
    key_base = {k: prov[k] for k in ("seg_model", "seg_folds", "seg_checkpoint_sha1", "seg_label_map")}
    key_base.update(convention=cohort.label_convention, mirroring=segmenter.use_mirroring,
                    tile_step_size=segmenter.tile_step_size)
    try:
        for i in tqdm(todo, desc="nnU-Net segmentation", unit="subject", disable=not progress):
            subject = cohort.subjects[i]
            sid = subject.subject_id
            mask_path, sidecar = seg_dir / f"{sid}_seg.nii.gz", seg_dir / f"{sid}_seg.json"
            try:
                inputs = files_sha1([subject.images[q] for q in segmenter.channel_sequences])
                key = {**key_base, "inputs": inputs}
                old = json.loads(sidecar.read_text()) if sidecar.is_file() and mask_path.is_file() else None
                if not overwrite and old is not None and old.get("key") == key:
                    seconds, run.status[sid] = float(old.get("seconds", float("nan"))), "reused"
                else:
                    validate_subject(dataclasses.replace(subject, seg=None), cohort.label_convention, tolerance)
                    mask, seconds = segmenter.predict(subject, cohort.label_convention)
                    _write_mask(mask, mask_path)
                    atomic_write_text(sidecar, json.dumps({"key": key, "seconds": seconds, "provenance": prov},
                                                          indent=1))
                    run.status[sid] = "predicted"
            except (CohortError, SegmentationError, OSError) as err:
                msg = str(err) if str(err).startswith(f"subject {sid}") else f"subject {sid}: {err}"
                run.failures[sid], run.status[sid] = msg, "failed"
                log.error("segmentation: %s", msg)
                continue
            except Exception as err:  # noqa: BLE001 - one bad subject must not end the cohort
                msg = f"subject {sid}: nnU-Net prediction failed ({type(err).__name__}: {err}); inputs " \
                      f"{[str(subject.images.get(q)) for q in segmenter.channel_sequences]}"
                run.failures[sid], run.status[sid] = msg, "failed"
                log.error("segmentation: %s", msg)
                continue
            run.seconds[sid] = seconds
            if subject.seg is not None:
                if "seg_reference" not in table:
                    table["seg_reference"] = ""
                table.at[table.index[i], "seg_reference"] = table.at[table.index[i], "seg"]
            table.at[table.index[i], "seg"] = _rel(mask_path, out_path.parent)
            for k, v in {**prov, "seg_device": str(segmenter.device), "seg_seconds": f"{seconds:.2f}"}.items():
                table.at[table.index[i], k] = v
    finally:
        _write_manifest(table, out_path)  # what was done survives an interruption
    return run


def segment_manifest(manifest: str | Path, segmenter: NNUNetSegmenter, output_manifest: str | Path | None = None,
                     seg_dir: str | Path | None = None, label_convention: str | dict = "brats2021",
                     **kwargs) -> SegmentationRun:
    """:func:`segment_cohort` on a manifest CSV.

    Defaults: masks in ``<manifest folder>/nnunet_seg/``, the new manifest beside the input as
    ``<stem>_nnunet.csv`` (the input is never overwritten unless ``output_manifest`` names it).
    """
    manifest = Path(manifest)
    cohort = read_manifest(manifest, label_convention)
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    output_manifest = Path(output_manifest) if output_manifest else manifest.with_name(f"{manifest.stem}_nnunet.csv")
    seg_dir = Path(seg_dir) if seg_dir else manifest.parent / "nnunet_seg"
    return segment_cohort(cohort, segmenter, output_manifest, seg_dir, table=table, table_dir=manifest.parent,
                          **kwargs)


def segmenter_from_config(model: dict, device: str = "auto", use_mirroring: bool = True,
                          tile_step_size: float = 0.5) -> NNUNetSegmenter:
    """:class:`NNUNetSegmenter` from the ``model`` block of ``configs/segment.yaml``."""
    model = dict(model)
    if not model.get("folder"):
        raise SegmentationError("no nnU-Net model given: set model.folder=/path/to/<trainer>__<plans>__<config>")
    folds = model.get("folds", [0])
    return NNUNetSegmenter(model["folder"], folds=[folds] if isinstance(folds, (int, str)) else list(folds),
                           checkpoint=model.get("checkpoint", "checkpoint_final.pth"),
                           label_map=model.get("label_map"), channels=model.get("channels"), device=device,
                           use_mirroring=use_mirroring, tile_step_size=tile_step_size,
                           allow_unsafe_load=bool(model.get("allow_unsafe_load", False)))


def summarise(run: SegmentationRun, segmenter: NNUNetSegmenter, out_dir: str | Path, t_total: float) -> dict:
    """Write ``failures.csv`` and ``summary.json`` into ``out_dir``; return the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"subject_id": list(run.failures), "error": list(run.failures.values())}).to_csv(
        out_dir / "failures.csv", index=False)
    counts = pd.Series(list(run.status.values()), dtype=str).value_counts().to_dict()
    times = pd.Series({k: v for k, v in run.seconds.items() if run.status.get(k) == "predicted"}, dtype=float)
    summary = {
        "manifest": str(run.manifest), "subjects": len(run.status), "counts": counts,
        "seconds_per_subject": {"mean": float(times.mean()) if len(times) else None,
                                "median": float(times.median()) if len(times) else None, "n": int(len(times))},
        "device": str(segmenter.device), "seconds_total": round(t_total, 2), "provenance": segmenter.provenance,
        "failures": run.failures,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def run_segmentation(cfg) -> SegmentationRun:
    """The work behind ``scripts/segment.py`` (config: ``configs/segment.yaml``)."""
    from omegaconf import OmegaConf

    t0 = time.perf_counter()
    # paths.* may hold ${hydra:...} interpolations that only resolve inside a Hydra run: skip them.
    c = {k: (OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v)
         for k, v in cfg.items() if k not in ("paths", "hydra")}
    if c.get("threads"):
        import torch

        torch.set_num_threads(int(c["threads"]))
    segmenter = segmenter_from_config(c["model"], c.get("device", "auto"), c.get("use_mirroring", True),
                                      c.get("tile_step_size", 0.5))
    coh = c["cohort"]
    opts = dict(only_missing=c.get("only_missing", True), overwrite=c.get("overwrite", False),
                tolerance=coh.get("geometry_tolerance", 1e-3), progress=c.get("progress", True))
    if coh["source"] == "manifest":
        run = segment_manifest(coh["path"], segmenter, c.get("output_manifest"), c.get("seg_dir"),
                               coh.get("label_convention", "brats2021"), **opts)
    else:  # a folder layout (or the synthetic cohort): read as train.py and extract_features.py read it
        cohort = cohort_from_config(coh, progress=c.get("progress", True))
        out = Path(c["output_dir"])
        run = segment_cohort(cohort, segmenter, c.get("output_manifest") or out / "manifest.csv",
                             c.get("seg_dir") or out / "nnunet_seg", **opts)
    summary = summarise(run, segmenter, c["output_dir"], time.perf_counter() - t0)
    sec = summary["seconds_per_subject"]
    print(f"nnU-Net segmentation: {summary['counts']} of {summary['subjects']} subjects"
          + (f", {sec['mean']:.1f} s per subject on {summary['device']}" if sec["n"] else "")
          + f" -> {run.manifest}" + (f"; failures in {Path(c['output_dir']) / 'failures.csv'}" if run.failures else ""))
    return run
