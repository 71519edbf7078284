"""IBSI names and codes of radfusion's PyRadiomics features, and the IBSI-1 digital phantom check.

The Image Biomarker Standardisation Initiative (IBSI, chapter 1) defines radiomics features, gives
each a permanent four-character code, and publishes consensus values on a digital phantom (5×4×4
voxels of 2 mm, grey levels 1–9, a mask of 74 voxels). :data:`MAPPING` pairs every PyRadiomics
feature radfusion computes that has an IBSI counterpart with that counterpart: its name, code, the
tag of the reference table (with the texture aggregation PyRadiomics uses: ``3D_avg`` for GLCM and
GLRLM, whose matrices are computed per direction and the features averaged; ``3D`` for the other
classes, whose single matrix merges all directions) and the conversion of the value where the
definitions differ by a constant (IBSI kurtosis is excess kurtosis: PyRadiomics' minus 3).

:func:`conformance` compares features extracted from the phantom with the consensus values
(``tests/test_ibsi.py``, ``docs/ibsi.md``); :func:`ibsi_names` maps the columns of a radfusion feature
table to IBSI names and codes (``scripts/extract_features.py`` writes it as ``ibsi_names.csv``).

The codes are transcribed from the IBSI reference manual (Zwanenburg et al., arXiv:1612.07003;
https://ibsi.readthedocs.io) and are checked there, not here; the reference values are read from the
IBSI's own file. PyRadiomics features without an IBSI counterpart (e.g. GLCM MCC, TotalEnergy,
the 2D maximum diameters) are not mapped, and IBSI features PyRadiomics lacks are not listed.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

#: PyRadiomics settings that reproduce the IBSI-1 phantom configuration: the integer grey levels as
#: they are (bin width 1, no resampling, no normalisation, no intensity shift), all seven classes.
PHANTOM_PARAMS: dict = {
    "setting": {"binWidth": 1, "label": 1, "additionalInfo": False, "normalize": False, "voxelArrayShift": 0,
                "resampledPixelSpacing": None, "interpolator": "sitkBSpline", "force2D": False},
    "imageType": {"Original": {}},
    "featureClass": {c: [] for c in ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")},
}


@dataclass(frozen=True)
class IBSIFeature:
    """One PyRadiomics feature and its IBSI counterpart."""

    pyradiomics: str         # ``<class>_<Feature>``, e.g. ``glcm_JointAverage``
    ibsi_name: str           # IBSI feature name
    code: str                # IBSI permanent identifier
    tag: str                 # IBSI tag without aggregation, e.g. ``cm_joint_avg``
    aggregation: str = ""    # ``3D_avg`` (GLCM, GLRLM), ``3D`` (GLSZM, GLDM→NGLDM, NGTDM), "" (others)
    offset: float = 0.0      # IBSI value = PyRadiomics value + offset

    @property
    def reference_tag(self) -> str:
        """The tag of the IBSI reference table (``cm_joint_avg_3D_avg``)."""
        return f"{self.tag}_{self.aggregation}" if self.aggregation else self.tag


def _rows(cls: str, aggregation: str, rows: str) -> list[IBSIFeature]:
    out = []
    for line in rows.strip().splitlines():
        feature, tag, code, name = (part.strip() for part in line.split("|"))
        out.append(IBSIFeature(f"{cls}_{feature}", name, code, tag, aggregation,
                               -3.0 if (cls, feature) == ("firstorder", "Kurtosis") else 0.0))
    return out


#: PyRadiomics feature -> IBSI feature, per class: ``Feature | tag | code | IBSI name``.
MAPPING: tuple[IBSIFeature, ...] = tuple(
    _rows("shape", "", """
        MeshVolume | morph_volume | RNU0 | Volume (mesh)
        VoxelVolume | morph_vol_approx | YEKZ | Approximate volume
        SurfaceArea | morph_area_mesh | C0JK | Surface area (mesh)
        SurfaceVolumeRatio | morph_av | 2PR5 | Surface to volume ratio
        Sphericity | morph_sphericity | QCFX | Sphericity
        Maximum3DDiameter | morph_diam | L0JK | Maximum 3D diameter
        MajorAxisLength | morph_pca_maj_axis | TDIC | Major axis length
        MinorAxisLength | morph_pca_min_axis | P9VJ | Minor axis length
        LeastAxisLength | morph_pca_least_axis | 7J51 | Least axis length
        Elongation | morph_pca_elongation | Q3CK | Elongation
        Flatness | morph_pca_flatness | N17B | Flatness""")
    + _rows("firstorder", "", """
        Mean | stat_mean | Q4LE | Mean
        Variance | stat_var | ECT3 | Variance
        Skewness | stat_skew | KE2A | Skewness
        Kurtosis | stat_kurt | IPH6 | (Excess) kurtosis
        Median | stat_median | Y12H | Median
        Minimum | stat_min | 1GSF | Minimum
        10Percentile | stat_p10 | QG58 | 10th percentile
        90Percentile | stat_p90 | 8DWT | 90th percentile
        Maximum | stat_max | 84IY | Maximum
        InterquartileRange | stat_iqr | SALO | Interquartile range
        Range | stat_range | 2OJQ | Range
        MeanAbsoluteDeviation | stat_mad | 4FUA | Mean absolute deviation
        RobustMeanAbsoluteDeviation | stat_rmad | 1128 | Robust mean absolute deviation
        Energy | stat_energy | N8CA | Energy
        RootMeanSquared | stat_rms | 5ZWQ | Root mean square
        Entropy | ih_entropy | TLU2 | Intensity histogram entropy
        Uniformity | ih_uniformity | BJ5W | Intensity histogram uniformity""")
    + _rows("glcm", "3D_avg", """
        MaximumProbability | cm_joint_max | GYBY | Joint maximum
        JointAverage | cm_joint_avg | 60VM | Joint average
        SumSquares | cm_joint_var | UR99 | Joint variance
        JointEntropy | cm_joint_entr | TU9B | Joint entropy
        DifferenceAverage | cm_diff_avg | TF7R | Difference average
        DifferenceVariance | cm_diff_var | D3YU | Difference variance
        DifferenceEntropy | cm_diff_entr | NTRS | Difference entropy
        SumAverage | cm_sum_avg | ZGXS | Sum average
        SumEntropy | cm_sum_entr | P6QZ | Sum entropy
        JointEnergy | cm_energy | 8ZQL | Angular second moment
        Contrast | cm_contrast | ACUI | Contrast
        Id | cm_inv_diff | IB1Z | Inverse difference
        Idn | cm_inv_diff_norm | NDRX | Normalised inverse difference
        Idm | cm_inv_diff_mom | WF0Z | Inverse difference moment
        Idmn | cm_inv_diff_mom_norm | 1QCO | Normalised inverse difference moment
        InverseVariance | cm_inv_var | E8JP | Inverse variance
        Correlation | cm_corr | NI2N | Correlation
        Autocorrelation | cm_auto_corr | QWB0 | Autocorrelation
        ClusterTendency | cm_clust_tend | DG8W | Cluster tendency
        ClusterShade | cm_clust_shade | 7NFM | Cluster shade
        ClusterProminence | cm_clust_prom | AE86 | Cluster prominence
        Imc1 | cm_info_corr1 | R8DG | Information correlation 1
        Imc2 | cm_info_corr2 | JN9H | Information correlation 2""")
    + _rows("glrlm", "3D_avg", """
        ShortRunEmphasis | rlm_sre | 22OV | Short runs emphasis
        LongRunEmphasis | rlm_lre | W4KF | Long runs emphasis
        LowGrayLevelRunEmphasis | rlm_lgre | V3SW | Low grey level run emphasis
        HighGrayLevelRunEmphasis | rlm_hgre | G3QZ | High grey level run emphasis
        ShortRunLowGrayLevelEmphasis | rlm_srlge | HTZT | Short run low grey level emphasis
        ShortRunHighGrayLevelEmphasis | rlm_srhge | GD3A | Short run high grey level emphasis
        LongRunLowGrayLevelEmphasis | rlm_lrlge | IVPO | Long run low grey level emphasis
        LongRunHighGrayLevelEmphasis | rlm_lrhge | 3KUM | Long run high grey level emphasis
        GrayLevelNonUniformity | rlm_glnu | R5YN | Grey level non-uniformity
        GrayLevelNonUniformityNormalized | rlm_glnu_norm | OVBL | Normalised grey level non-uniformity
        RunLengthNonUniformity | rlm_rlnu | W92Y | Run length non-uniformity
        RunLengthNonUniformityNormalized | rlm_rlnu_norm | IC23 | Normalised run length non-uniformity
        RunPercentage | rlm_r_perc | 9ZK5 | Run percentage
        GrayLevelVariance | rlm_gl_var | 8CE5 | Grey level variance
        RunVariance | rlm_rl_var | SXLW | Run length variance
        RunEntropy | rlm_rl_entr | HJ9O | Run entropy""")
    + _rows("glszm", "3D", """
        SmallAreaEmphasis | szm_sze | 5QRC | Small zone emphasis
        LargeAreaEmphasis | szm_lze | 48P8 | Large zone emphasis
        LowGrayLevelZoneEmphasis | szm_lgze | XMSY | Low grey level zone emphasis
        HighGrayLevelZoneEmphasis | szm_hgze | 5GN9 | High grey level zone emphasis
        SmallAreaLowGrayLevelEmphasis | szm_szlge | 5RAI | Small zone low grey level emphasis
        SmallAreaHighGrayLevelEmphasis | szm_szhge | HW1V | Small zone high grey level emphasis
        LargeAreaLowGrayLevelEmphasis | szm_lzlge | YH51 | Large zone low grey level emphasis
        LargeAreaHighGrayLevelEmphasis | szm_lzhge | J17V | Large zone high grey level emphasis
        GrayLevelNonUniformity | szm_glnu | JNSA | Grey level non-uniformity
        GrayLevelNonUniformityNormalized | szm_glnu_norm | Y1RO | Normalised grey level non-uniformity
        SizeZoneNonUniformity | szm_zsnu | 4JP3 | Zone size non-uniformity
        SizeZoneNonUniformityNormalized | szm_zsnu_norm | VB3A | Normalised zone size non-uniformity
        ZonePercentage | szm_z_perc | P30P | Zone percentage
        GrayLevelVariance | szm_gl_var | BYLV | Grey level variance
        ZoneVariance | szm_zs_var | 3NSA | Zone size variance
        ZoneEntropy | szm_zs_entr | GU8N | Zone size entropy""")
    # PyRadiomics' GLDM with alpha 0 (gldm_a) and distance 1 is IBSI's neighbouring grey level
    # dependence matrix (NGLDM); its "small/large dependence" are IBSI's "low/high dependence".
    + _rows("gldm", "3D", """
        SmallDependenceEmphasis | ngl_lde | SODN | Low dependence emphasis
        LargeDependenceEmphasis | ngl_hde | IMOQ | High dependence emphasis
        LowGrayLevelEmphasis | ngl_lgce | TL9H | Low grey level count emphasis
        HighGrayLevelEmphasis | ngl_hgce | OAE7 | High grey level count emphasis
        SmallDependenceLowGrayLevelEmphasis | ngl_ldlge | EQ3F | Low dependence low grey level emphasis
        SmallDependenceHighGrayLevelEmphasis | ngl_ldhge | JA6D | Low dependence high grey level emphasis
        LargeDependenceLowGrayLevelEmphasis | ngl_hdlge | NBZI | High dependence low grey level emphasis
        LargeDependenceHighGrayLevelEmphasis | ngl_hdhge | 9QMG | High dependence high grey level emphasis
        GrayLevelNonUniformity | ngl_glnu | FP8K | Grey level non-uniformity
        DependenceNonUniformity | ngl_dcnu | Z87G | Dependence count non-uniformity
        DependenceNonUniformityNormalized | ngl_dcnu_norm | OKJI | Normalised dependence count non-uniformity
        GrayLevelVariance | ngl_gl_var | 1PFV | Grey level variance
        DependenceVariance | ngl_dc_var | DNX2 | Dependence count variance
        DependenceEntropy | ngl_dc_entr | FCBV | Dependence count entropy""")
    + _rows("ngtdm", "3D", """
        Coarseness | ngt_coarseness | QCDE | Coarseness
        Contrast | ngt_contrast | 65HE | Contrast
        Busyness | ngt_busyness | NQ30 | Busyness
        Complexity | ngt_complexity | HDEZ | Complexity
        Strength | ngt_strength | 1X9X | Strength""")
)
BY_PYRADIOMICS: dict[str, IBSIFeature] = {m.pyradiomics: m for m in MAPPING}

#: Mapped features known to fall outside the consensus tolerance, and why (``docs/ibsi.md``).
KNOWN_DEVIATIONS: dict[str, str] = {
    "shape_MinorAxisLength": (
        "PyRadiomics' principal axes use the population covariance of the voxel centres (divided by N), the "
        "IBSI consensus the sample covariance (N - 1): every axis length is sqrt(N / (N - 1)) = 1.0068 times "
        "smaller for the phantom's N = 74 voxels, which leaves this one 0.7 % below the reference, just "
        "outside its tolerance (0.6 %); the major axis (tolerance 0.9 %) stays inside, and elongation and "
        "flatness (ratios) are unaffected. Negligible for tumour-sized regions (thousands of voxels)"),
    "shape_LeastAxisLength": "as MinorAxisLength: sqrt(N / (N - 1)) smaller; 0.7 % below, tolerance 0.6 %",
}


def read_reference(path: str | Path) -> dict[str, tuple[float, float]]:
    """``{tag: (value, tolerance)}`` of the IBSI reference file (``value;tolerance;tag``, ``;`` separated);
    tags without a consensus value (empty cells) are left out."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f, delimiter=";"):
            value, tol = (row.get("reference value") or "").strip(), (row.get("tolerance") or "").strip()
            if value:
                out[row["tag"].strip()] = (float(value), float(tol or 0.0))
    return out


def allowed_difference(reference: float, tolerance: float, digits: int = 3) -> float:
    """How far a value may lie from ``reference``: the tolerance, plus half a unit of the reference's last
    significant digit. The IBSI tables give values to 3 significant digits (``2.15``, tolerance 0):
    a computed 2.1486 agrees with it; without the rounding term nothing exact would pass."""
    if reference == 0:
        return tolerance + 0.5 * 10.0 ** -digits
    return tolerance + 0.5 * 10.0 ** (math.floor(math.log10(abs(reference))) - (digits - 1))


def conformance(features: Mapping[str, float], reference: Mapping[str, tuple[float, float]],
                image_type: str = "original") -> pd.DataFrame:
    """One row per mapped feature: radfusion/PyRadiomics name, IBSI name, code, tag, value (IBSI
    convention), reference, tolerance, allowed difference, difference, pass, known deviation.

    ``features`` holds PyRadiomics' keys (``original_glcm_JointAverage``); a mapped feature missing
    from ``features`` or from ``reference`` is an error (the check would silently shrink otherwise).
    """
    rows = []
    for m in MAPPING:
        key = f"{image_type}_{m.pyradiomics}"
        if key not in features:
            raise KeyError(f"feature {key} was not extracted (is its class enabled?)")
        if m.reference_tag not in reference:
            raise KeyError(f"IBSI tag {m.reference_tag} has no reference value")
        value = float(features[key]) + m.offset
        ref, tol = reference[m.reference_tag]
        allowed = allowed_difference(ref, tol)
        rows.append({"radfusion": m.pyradiomics, "ibsi_name": m.ibsi_name, "ibsi_code": m.code,
                     "ibsi_tag": m.reference_tag, "value": value, "reference": ref, "tolerance": tol,
                     "allowed": allowed, "difference": value - ref, "pass": abs(value - ref) <= allowed,
                     "known_deviation": KNOWN_DEVIATIONS.get(m.pyradiomics, "")})
    return pd.DataFrame(rows)


_COLUMN = re.compile(r"^(?P<prefix>.*?)(?P<itype>original)_(?P<cls>[a-z]+)_(?P<feature>[A-Za-z0-9]+)$")
_SHAPE = re.compile(r"^(?P<prefix>[^_]+)_shape_(?P<feature>[A-Za-z0-9]+)$")


def ibsi_names(columns: Iterable[str]) -> pd.DataFrame:
    """IBSI name, code and tag of each feature-table column that has an IBSI counterpart.

    ``<habitat>_shape_<F>`` and ``<habitat>_<sequence>_original_<class>_<F>`` map; filtered image
    types (LoG, wavelet, ...) and radfusion's own columns (voxels, empty flags, missing indicators) do
    not, as IBSI chapter 1 defines features of the unfiltered image only. The IBSI values hold for the
    discretisation the run used (radfusion's default: bin width 25 on z-scored × 100 images)."""
    rows = []
    for col in columns:
        match = _SHAPE.match(col)
        key = f"shape_{match['feature']}" if match else None
        if key is None:
            match = _COLUMN.match(col)
            key = f"{match['cls']}_{match['feature']}" if match else None
        m = BY_PYRADIOMICS.get(key) if key else None
        if m is not None:
            rows.append({"column": col, "ibsi_name": m.ibsi_name, "ibsi_code": m.code, "ibsi_tag": m.reference_tag,
                         "offset": m.offset})
    return pd.DataFrame(rows, columns=["column", "ibsi_name", "ibsi_code", "ibsi_tag", "offset"])


def markdown_table(table: pd.DataFrame) -> str:
    """The conformance table as Markdown (``docs/ibsi.md``; ``scripts/ibsi_table.py``)."""
    lines = ["| radfusion (PyRadiomics) | IBSI feature | code | IBSI tag | value | reference | tolerance | pass |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        mark = "yes" if r["pass"] else ("**no** (known deviation)" if r["known_deviation"] else "**no**")
        lines.append(f"| {r['radfusion']} | {r['ibsi_name']} | {r['ibsi_code']} | {r['ibsi_tag']} | {r['value']:.4g} | "
                     f"{r['reference']:g} | {r['tolerance']:g} | {mark} |")
    return "\n".join(lines)
