"""scripts/extract_features.py: the real Hydra entry point on a manifest cohort with one bad subject."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from radfusion.cohort.subject import SEQUENCES
from test_radiomics import _write_subject

ROOT = Path(__file__).resolve().parents[1]


def test_extract_features_script_writes_the_table(tmp_path: Path) -> None:
    subjects = [_write_subject(tmp_path / "data", sid, seed=i) for i, sid in enumerate(["P1", "P2", "P3"])]
    subjects[2].images["t1ce"].write_bytes(b"not a NIfTI file")
    rows = [{"subject_id": s.subject_id, **{q: s.images[q] for q in SEQUENCES}, "seg": s.seg, "idh": 1}
            for s in subjects]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "scripts" / "extract_features.py"), "cohort.source=manifest",
           f"cohort.path={tmp_path / 'manifest.csv'}", f"paths.cache_dir={tmp_path / 'cache'}",
           f"hydra.run.dir={out}", "features.sequences=[t1ce,flair]", "features.n_jobs=1", "progress=false",
           "~features.params.featureClass", "+features.params.featureClass={shape: null, firstorder: null}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 of 3 subjects" in proc.stdout
    df = pd.read_parquet(out / "features.parquet")
    assert list(df.index) == ["P1", "P2"]
    assert "WT_flair_original_firstorder_Mean" in df.columns and "ET_shape_MeshVolume" in df.columns
    assert not any("_glcm_" in c for c in df.columns)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == 1 and str(subjects[2].images["t1ce"]) in summary["failures"]["P3"]
    assert pd.read_csv(out / "failures.csv")["subject_id"].tolist() == ["P3"]
    assert len(pd.read_csv(out / "diagnostics.csv")) == 6
