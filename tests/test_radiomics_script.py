"""scripts/extract_features.py: the real Hydra entry point on a manifest cohort with one bad subject."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from helpers.config import compose_config, compose_train_cfg
from helpers.paths import ROOT
from helpers.subjects import write_subject
from radfusion.cohort.subject import SEQUENCES


def test_extract_features_script_writes_the_table(tmp_path: Path) -> None:
    subjects = [write_subject(tmp_path / "data", sid, seed=i) for i, sid in enumerate(["P1", "P2", "P3"])]
    subjects[2].images["t1ce"].write_bytes(b"not a NIfTI file")
    rows = [{"subject_id": s.subject_id, **{q: s.images[q] for q in SEQUENCES}, "seg": s.seg, "idh": 1}
            for s in subjects]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "scripts" / "extract_features.py"), "cohort=manifest",
           f"cohort.path={tmp_path / 'manifest.csv'}", f"paths.cache_dir={tmp_path / 'cache'}",
           f"hydra.run.dir={out}", "features.sequences=[t1ce,flair]", "features.n_jobs=1", "progress=false",
           "~features.params.featureClass", "+features.params.featureClass={shape: null, firstorder: null}",
           # validated first, as by train.py: P3 is dropped (skip_invalid), and accepted (allow_failures);
           # without them the script exits 1 (tests/test_failures.py)
           "cohort.skip_invalid=true", "allow_failures=true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 of 3 subjects" in proc.stdout and "1 failed (1 validation, 0 extraction" in proc.stdout
    df = pd.read_parquet(out / "features.parquet")
    assert list(df.index) == ["P1", "P2"]
    assert "WT_flair_original_firstorder_Mean" in df.columns and "ET_shape_MeshVolume" in df.columns
    assert not any("_glcm_" in c for c in df.columns)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == 1 and str(subjects[2].images["t1ce"]) in summary["failures"]["P3"]
    assert summary["failures"]["P3"].startswith("validation: ")
    assert pd.read_csv(out / "failures.csv")[["subject_id", "step"]].values.tolist() == [["P3", "validation"]]
    assert len(pd.read_csv(out / "diagnostics.csv")) == 4  # the 2 valid subjects x 2 sequences


def _block(node) -> dict:
    return OmegaConf.to_container(node, resolve=True)


def test_train_extract_and_segment_compose_one_cohort_group() -> None:
    """configs/cohort/ is the one home of cohort blocks: train.py reads it as data.cohort, extract and
    segment as cohort; the synthetic generator settings sit inside the block and name its folder."""
    default = {"n_subjects": 100, "shape": [96, 96, 96], "seed": 0, "n_sites": 4, "effect_scale": 1.0,
               "n_timepoints": 1}
    train = compose_train_cfg(["paths.data_dir=/d"])
    extract = compose_config("extract.yaml", ["paths.data_dir=/d"])
    cohort = _block(train.data.cohort)
    assert cohort["path"] == "/d/synthetic/n100_96_seed0"  # the default cohort's folder (and caches) unchanged
    assert cohort["synthetic"] == default and cohort == _block(extract.cohort)
    assert "synthetic" not in train.data and "synthetic" not in extract  # no second copy of the settings
    # the folder follows the generator settings (a relative interpolation inside the block)
    assert _block(compose_train_cfg(["debug=small", "paths.data_dir=/d"]).data.cohort)["path"] == \
        "/d/synthetic/n24_48_seed0"
    small = compose_config("extract.yaml", ["cohort.synthetic.n_subjects=7", "cohort.synthetic.seed=3",
                                            "cohort.synthetic.shape=[40,40,40]", "paths.data_dir=/d"])
    assert _block(small.cohort)["path"] == "/d/synthetic/n7_40_seed3"
    long = _block(compose_train_cfg(["experiment=response_delta_hybrid", "paths.data_dir=/d"]).data.cohort)
    assert long["path"] == "/d/synthetic/long_n100_96_seed0" and long["synthetic"]["n_timepoints"] == 2

    # the data configs swap the block; train keeps requiring the clinical CSV a folder layout needs for labels
    brats = compose_train_cfg(["data=brats", "data.cohort.path=/b"])
    assert brats.data.cohort.source == "brats2021" and OmegaConf.is_missing(brats.data.cohort, "clinical")
    assert "synthetic" not in brats.data.cohort
    assert compose_train_cfg(["data=brats2023", "data.cohort.path=/b"]).data.cohort.label_convention == "brats2023"
    manifest = _block(compose_train_cfg(["data=manifest", "data.cohort.path=/m.csv"]).data.cohort)
    segment = compose_config("segment.yaml", ["cohort.path=/m.csv", "model.folder=/m"])
    assert manifest == _block(segment.cohort) == {
        "source": "manifest", "path": "/m.csv", "clinical": None, "label_convention": "brats2021",
        "skip_invalid": False, "geometry_tolerance": 1e-3, "brain_mask": "auto",
        "sequences": ["t1", "t1ce", "t2", "flair"], "missing_sequences": "auto", "label_values": None,
        "validation_cache": True}
    assert _block(compose_train_cfg(["cohort@data.cohort=manifest", "data.cohort.path=/m.csv"]).data.cohort) == manifest
    seg_nnunet = compose_config("segment.yaml", ["cohort=nnunet", "cohort.path=/n", "model.folder=/m"])
    assert _block(seg_nnunet.cohort)["clinical"] is None and seg_nnunet.cohort.label_convention == "auto"
    with pytest.raises(Exception, match="data.synthetic"):  # the old key is gone, loudly
        compose_train_cfg(["data.synthetic.n_subjects=5"])
