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
