"""Settings of habitat radiomics: preprocessing + PyRadiomics parameters, and their cache key.

The PyRadiomics part is an ordinary PyRadiomics parameter dict
(``{"setting": {...}, "imageType": {...}, "featureClass": {...}}``) or a user's PyRadiomics YAML file,
so anything PyRadiomics documents can be passed through unchanged. ``None`` values under ``setting``
mean "not set" (so a config can carry ``binCount: null`` next to ``binWidth: 25``).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from radfusion.cache import file_sha1, settings_hash
from radfusion.cohort.habitats import ALL_HABITATS, HABITATS
from radfusion.cohort.subject import SEQUENCES

#: Bump when the meaning of cached features changes (column naming, preprocessing, empty handling).
FEATURE_SCHEMA_VERSION = 2

#: Ways to run the per-(subject, sequence) task list.
BACKENDS: tuple[str, ...] = ("loky", "dask")

#: Default PyRadiomics parameters for MRI z-scored in the brain and multiplied by 100
#: (see :func:`radfusion.imaging.preprocess.zscore_in_brain`).
DEFAULT_PYRADIOMICS_PARAMS: dict[str, Any] = {
    "setting": {
        # Fixed bin width (PyRadiomics' recommendation over bin count): 25 grey levels = 0.25 SD.
        "binWidth": 25,
        # Features are computed on masks we build with 1 inside.
        "label": 1,
        # Diagnostics (versions, hashes, settings) are dropped anyway; not computing them is faster.
        "additionalInfo": False,
        # Our preprocessing already normalised and resampled the whole brain. PyRadiomics'
        # own normalize/resampling would act on the cropped region only, so they stay off.
        "normalize": False,
        # Firstorder Energy/TotalEnergy square (x + shift); with z-scores x100 a shift of 300 (3 SD)
        # keeps almost every voxel positive, as PyRadiomics advises for normalised images.
        "voxelArrayShift": 300,
    },
    "imageType": {"Original": {}},
    "featureClass": {
        "shape": [],
        "firstorder": [],
        "glcm": [],
        "glrlm": [],
        "glszm": [],
        "gldm": [],
        "ngtdm": [],
    },
}

#: Config keys that belong to neighbouring machinery and are ignored here.
_IGNORED_CONFIG_KEYS = {"cache_dir"}

#: Fields that change how the work is done, never the features (kept out of the cache key; a new
#: such field must be added here, or every existing feature cache would be recomputed).
_EXECUTION_FIELDS = ("n_jobs", "backend", "scheduler", "memo_binning")


@dataclass
class FeatureSettings:
    """Everything that determines the habitat features of a subject.

    Attributes:
        params: PyRadiomics parameter dict (``setting``/``imageType``/``featureClass``); ignored when
            ``params_file`` is given.
        params_file: path of a PyRadiomics YAML/JSON parameter file, used as-is.
        habitats: habitat names (``ET, NCR, ED, TC, WT`` and ``RING``, see :mod:`radfusion.cohort.habitats`).
        sequences: MRI sequences to extract from; in the configs the cohort's (``data.cohort.sequences``).
            A subject lacking one gets NaN features for it and ``<sequence>_missing = 1``.
        spacing: isotropic resampling in mm before extraction (None = native grid).
        normalize: ``"zscore"`` (in-brain z-score × ``normalize_scale``) or ``"none"`` (then
            PyRadiomics' own ``normalize`` setting, if on, is applied to each whole sequence).
        normalize_scale: multiplier after z-scoring (grey levels per SD).
        crop_padding: voxels of padding around the whole-tumour (plus ring) bounding box when
            cropping; filtered images (LoG, wavelet) are computed on that crop.
        min_voxels: habitats with fewer voxels are treated as empty (features NaN, ``_empty = 1``).
        ring_mm: width of the peritumoral ``RING`` habitat in mm.
        n_jobs: parallel worker processes (-1 = all cores; does not change the features).
        backend: ``"loky"`` (processes on this machine) or ``"dask"`` (a Dask distributed cluster).
        scheduler: Dask scheduler address (``tcp://host:8786``); None starts a LocalCluster.
        memo_binning: reuse PyRadiomics' grey-level binning between the feature classes of one
            habitat (:func:`radfusion.radiomics.pyrad.binning_memo`); identical values, ~20 % faster
            on large habitats. Off leaves PyRadiomics' ``binImage`` untouched (for profiling it).
    """

    params: dict = field(default_factory=lambda: copy.deepcopy(DEFAULT_PYRADIOMICS_PARAMS))
    params_file: str | None = None
    habitats: list[str] = field(default_factory=lambda: list(HABITATS))
    sequences: list[str] = field(default_factory=lambda: list(SEQUENCES))
    spacing: float | None = 1.0
    normalize: str = "zscore"
    normalize_scale: float = 100.0
    crop_padding: int = 5
    min_voxels: int = 10
    ring_mm: float = 5.0
    n_jobs: int = 1
    backend: str = "loky"
    scheduler: str | None = None
    memo_binning: bool = True

    def __post_init__(self) -> None:
        if self.normalize not in ("zscore", "none"):
            raise ValueError(f"normalize must be 'zscore' or 'none', got {self.normalize!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        unknown = [h for h in self.habitats if h not in ALL_HABITATS]
        if unknown or len(set(self.habitats)) != len(list(self.habitats)) or not list(self.habitats):
            raise ValueError(f"habitats must be distinct names from {list(ALL_HABITATS)}, got {list(self.habitats)}")
        unknown = [s for s in self.sequences if s not in SEQUENCES]
        if unknown or len(set(self.sequences)) != len(list(self.sequences)) or not list(self.sequences):
            raise ValueError(f"sequences must be distinct names from {list(SEQUENCES)}, got {list(self.sequences)}")
        if not isinstance(self.memo_binning, bool):
            raise ValueError(f"memo_binning must be true or false, got {self.memo_binning!r}")
        if not self.ring_mm > 0:
            raise ValueError(f"ring_mm must be > 0 mm, got {self.ring_mm}")
        if self.params_file is not None and not Path(self.params_file).is_file():
            raise FileNotFoundError(f"PyRadiomics parameter file {self.params_file} does not exist")
        if self.crop_padding < 0 or self.min_voxels < 1:
            raise ValueError(f"crop_padding must be >= 0 and min_voxels >= 1 "
                             f"(got {self.crop_padding}, {self.min_voxels})")
        self.habitats = list(self.habitats)
        self.sequences = list(self.sequences)
        if self.spacing is not None:
            self.spacing = float(self.spacing)
        self.ring_mm = float(self.ring_mm)

    @property
    def pyradiomics_params(self) -> dict | str:
        """What to hand to ``RadiomicsFeatureExtractor``: the file path if given, else the dict
        (with ``None``-valued settings removed: PyRadiomics' schema would reject them)."""
        if self.params_file is not None:
            return str(self.params_file)
        params = copy.deepcopy(dict(self.params))
        if isinstance(params.get("setting"), dict):
            params["setting"] = {k: v for k, v in params["setting"].items() if v is not None}
        return params

    @classmethod
    def from_config(cls, cfg: Any) -> FeatureSettings:
        """Build from a plain dict or an omegaconf ``DictConfig`` (e.g. Hydra's ``cfg.features``).

        Unknown keys raise (a typo must not silently fall back to a default), except keys starting
        with ``_`` (Hydra's ``_target_``) and ``cache_dir``.
        """
        if cfg is None:
            return cls()
        if hasattr(cfg, "_metadata"):  # omegaconf container, without importing omegaconf here
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(cfg, resolve=True)
        cfg = dict(cfg)
        known = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in cfg.items() if k in known}
        unknown = sorted(k for k in cfg
                         if k not in known and not k.startswith("_") and k not in _IGNORED_CONFIG_KEYS)
        if unknown:
            raise ValueError(f"unknown feature setting(s) {unknown}; known: {sorted(known)}")
        if kwargs.get("params") is None:
            kwargs.pop("params", None)
        return cls(**kwargs)

    def cache_key(self) -> str:
        """SHA-1 hex of exactly what changes the feature table (not ``n_jobs``, ``backend``,
        ``scheduler`` or ``memo_binning``).

        It names the folder of ``features.parquet``; the per-(subject, sequence) cache below it is
        keyed more finely (see :mod:`radfusion.radiomics.engine`). A parameter file enters by its
        content, not its path; the PyRadiomics version enters too, since feature definitions have
        changed between releases.
        """
        import radiomics

        state = asdict(self)
        for name in _EXECUTION_FIELDS:
            state.pop(name)
        if "RING" not in self.habitats:
            state.pop("ring_mm")  # irrelevant without the ring: old keys stay valid
        if self.params_file is not None:
            state.pop("params")
            state["params_file"] = file_sha1(self.params_file)
        else:
            state["params"] = self.pyradiomics_params
        state["pyradiomics"] = str(radiomics.__version__)
        state["schema"] = FEATURE_SCHEMA_VERSION
        return settings_hash(state, None, compact=True)
