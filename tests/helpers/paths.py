"""Where things are, relative to this checkout (one definition instead of one per test file)."""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root (holds ``train.py``, ``evaluate.py``, ``configs/``, ``scripts/``).
ROOT = Path(__file__).resolve().parents[2]
#: The real Hydra config directory the entry points use.
CONFIG_DIR = ROOT / "configs"
#: Reference data shared between checkouts (PyRadiomics' brain1 case and its baseline tables).
SHARED_DATA = Path(os.environ.get("RADFUSION_SHARED_DATA", ROOT.parent / "shared" / "data"))


def reference_cases() -> list[tuple[str, Path, Path]]:
    """``(name, image, mask)`` of the shared reference cases present: PyRadiomics' brain1 and breast1,
    and the IBSI digital phantom. Empty when the shared data is absent (tests then skip)."""
    pyrad, ibsi = SHARED_DATA / "pyradiomics", SHARED_DATA / "ibsi"
    cases = [(name, pyrad / f"{name}_image.nrrd", pyrad / f"{name}_label.nrrd") for name in ("brain1", "breast1")]
    cases.append(("ibsi_phantom", ibsi / "digital_phantom_image.nii.gz", ibsi / "digital_phantom_mask.nii.gz"))
    return [case for case in cases if case[1].is_file()]
