"""The habitat engine on PyRadiomics' own baseline cases in every baseline configuration.

For brain1 and breast1 (the images in the shared data) and each configuration of PyRadiomics'
baseline (default, 2D, fixed bin count, distance weighting, flat region, normalisation, resampling,
resegmentation), every feature of every class through the engine (``compute_entries``: shared
filtering, binning memo, the faster shape, class set-up, zones and run lengths) equals PyRadiomics'
own ``execute`` within 1e-9. ``test_radiomics.py`` holds ``execute`` itself to the baseline CSVs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest
import radiomics
import SimpleITK as sitk
import yaml
from radiomics import imageoperations

from helpers.paths import SHARED_DATA
from helpers.radiomics import reference_execute, rel
from radfusion.radiomics import engine
from radfusion.radiomics.pyrad import binning_memo, build_plan, capture_warnings

PYRAD = SHARED_DATA / "pyradiomics"
BASELINE = PYRAD / "baseline" / "baseline_glcm.csv"
CLASSES = {"firstorder": [], "glcm": [], "glrlm": [], "glszm": [], "gldm": [], "ngtdm": [], "shape": []}


def _configs() -> list[tuple[str, str]]:
    if not BASELINE.is_file():
        return []
    columns = pd.read_csv(BASELINE, index_col=0, nrows=0).columns
    return [(c.split("_")[0], c) for c in columns
            if c.split("_")[0] in ("brain1", "breast1") and (PYRAD / f"{c.split('_')[0]}_image.nrrd").is_file()]


CONFIGS = _configs()


def _params(column: str) -> dict:
    table = pd.read_csv(BASELINE, index_col=0)[column]
    settings = ast.literal_eval(table["diagnostics_Configuration_Settings"])
    schema_file, _ = radiomics.getParameterValidationFiles()
    known = set(yaml.safe_load(Path(schema_file).read_text())["mapping"]["setting"]["mapping"])
    settings = {k: v for k, v in settings.items() if k in known}
    settings["additionalInfo"] = False
    image_types = ast.literal_eval(table["diagnostics_Configuration_EnabledImageTypes"])
    return {"setting": settings, "imageType": image_types, "featureClass": CLASSES}


@pytest.mark.skipif(not CONFIGS, reason=f"PyRadiomics baseline not found in {PYRAD} (set RADFUSION_SHARED_DATA)")
@pytest.mark.parametrize("case,column", CONFIGS, ids=[c for _, c in CONFIGS])
def test_engine_equals_execute_in_every_baseline_configuration(case: str, column: str) -> None:
    params = _params(column)
    s = params["setting"]
    image = sitk.ReadImage(str(PYRAD / f"{case}_image.nrrd"))
    mask = sitk.ReadImage(str(PYRAD / f"{case}_label.nrrd"))
    reference = reference_execute(image, mask, params, label=s.get("label", 1))

    # What the engine's item does before compute_entries: normalise the whole image, resample once.
    if s.get("normalize"):
        image = imageoperations.normalizeImage(image, **s)
    if s.get("resampledPixelSpacing") is not None and s.get("interpolator") is not None:
        image, mask = imageoperations.resampleImage(image, mask, **s)
    plan = build_plan(params)
    label = s.get("label", 1)
    as_one = sitk.Cast(mask == label, sitk.sitkUInt8)  # the engine builds every habitat mask with 1 inside
    with binning_memo(True), capture_warnings():
        entries = engine.compute_entries(image, {"roi": as_one}, plan, True, None)
    got = {k: v for entry in entries.values() for k, v in entry.items()}
    assert set(reference) <= set(got), sorted(set(reference) - set(got))[:5]
    bad = [f"{k}: engine {got[k]!r}, execute {v!r}" for k, v in reference.items()
           if not (pd.isna(v) and pd.isna(got[k])) and not rel(got[k], v) <= 1e-9]
    assert not bad, "\n".join(bad[:10])
    assert len(reference) >= 90
