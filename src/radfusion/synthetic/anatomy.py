"""Anatomy, tumour geometry and scanner model behind :mod:`radfusion.synthetic.generator`.

Everything here works in voxel units on arrays indexed ``(x, y, z)`` with x towards the
subject's right, y anterior and z superior (RAS, matching the identity affine the cohort is
written with). Sizes are fractions of the brain's semi-axes, so a tumour keeps its relative size
whether the grid is 32³ or 240×240×155; ``spacing`` only labels the voxels in mm.

Fields are built cheaply: white noise on a coarse grid, smoothed there and linearly upsampled
with :func:`scipy.ndimage.zoom`; irregular outlines are a random cubic polynomial of the
direction from the tumour centre. No per-voxel Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Sequences in channel order (the same as :data:`radfusion.cohort.subject.SEQUENCES`).
SEQUENCES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

#: Tissue classes of :data:`INTENSITY`; ``net`` is non-enhancing tumour core (IDH-mutant only).
CLASSES: tuple[str, ...] = ("csf", "gm", "wm", "ed", "net", "et", "ncr")

#: Clean intensity (arbitrary scanner units, before site effects) per sequence and class. The
#: relative order is what matters: T1 WM > GM > CSF; T1ce the same with ET very bright; T2 CSF,
#: edema and necrosis bright; FLAIR CSF dark, edema bright. ``net`` is the T2–FLAIR mismatch
#: contrast: brighter than edema on T2 but suppressed on FLAIR.
INTENSITY: dict[str, dict[str, float]] = {
    "t1":    dict(csf=300.0, gm=650.0, wm=900.0, ed=560.0, net=520.0, et=620.0, ncr=380.0),
    "t1ce":  dict(csf=320.0, gm=680.0, wm=920.0, ed=590.0, net=540.0, et=1500.0, ncr=400.0),
    "t2":    dict(csf=1800.0, gm=950.0, wm=700.0, ed=1350.0, net=1700.0, et=1150.0, ncr=1600.0),
    "flair": dict(csf=250.0, gm=900.0, wm=700.0, ed=1250.0, net=700.0, et=1100.0, ncr=850.0),
}

#: How strongly calcification-like spots darken each sequence (fraction of the intensity removed).
SPOT_DEPTH: dict[str, float] = {"t1": 0.3, "t1ce": 0.6, "t2": 0.8, "flair": 0.5}

#: Brain semi-axes as fractions of the grid extent along x, y, z (before the subject's head scale).
BRAIN_SEMI_AXES = np.array([0.36, 0.43, 0.40])


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: float,
                 sigma_low: float = 0.8) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field of ``shape``; ``cell`` = correlation length (voxels)."""
    low_shape = tuple(max(3, int(np.ceil(n / max(cell, 1.0))) + 1) for n in shape)
    low = ndimage.gaussian_filter(rng.standard_normal(low_shape), sigma_low, mode="nearest")
    field = ndimage.zoom(low, [n / m for n, m in zip(shape, low_shape, strict=True)], order=1)
    # zoom rounds the output size; pad/crop defensively so the shape is exactly what was asked.
    field = np.pad(field, [(0, max(0, n - f)) for n, f in zip(shape, field.shape, strict=True)], mode="edge")
    field = field[tuple(slice(0, n) for n in shape)].astype(np.float32)
    return (field - field.mean()) / (field.std() + 1e-8)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def direction_basis(dx, dy, dz) -> np.ndarray:
    """The 19 monomials of degree 1–3 of a unit direction, stacked on a new first axis (float32)."""
    dx, dy, dz = (np.asarray(a, np.float32) for a in (dx, dy, dz))
    lin = [dx, dy, dz]
    quad = [dx * dx, dy * dy, dz * dz, dx * dy, dx * dz, dy * dz]
    cub = [q * d for q, d in ((quad[0], dx), (quad[1], dy), (quad[2], dz), (quad[0], dy),
                              (quad[0], dz), (quad[1], dx), (quad[1], dz), (quad[2], dx),
                              (quad[2], dy), (quad[3], dz))]
    return np.stack(np.broadcast_arrays(*lin, *quad, *cub))


class DirectionalField:
    """A smooth random function on the unit sphere (random cubic polynomial of the direction).

    Normalised to mean 0 and std 1 over directions, so ``exp(a * f(d))`` is an outline whose
    log-radius varies by about ``a``: low-frequency lobes, no spikes.
    """

    _reference: np.ndarray | None = None  # basis at 400 Fibonacci-sphere directions

    def __init__(self, rng: np.random.Generator) -> None:
        self.coef = rng.standard_normal(19).astype(np.float32)
        if DirectionalField._reference is None:
            k = np.arange(400) + 0.5
            polar, azim = np.arccos(1 - 2 * k / 400), np.pi * (1 + 5 ** 0.5) * k
            DirectionalField._reference = direction_basis(
                np.cos(azim) * np.sin(polar), np.sin(azim) * np.sin(polar), np.cos(polar))
        values = self._combine(DirectionalField._reference)
        self.mean, self.std = np.float32(values.mean()), np.float32(values.std() + 1e-8)

    def _combine(self, basis: np.ndarray) -> np.ndarray:
        # Elementwise accumulation rather than a BLAS product: BLAS kernels and thread counts can
        # change the last bits, and we want the same arrays on every machine.
        out = self.coef[0] * basis[0]
        for c, b in zip(self.coef[1:], basis[1:], strict=True):
            out = out + c * b
        return out

    def __call__(self, basis: np.ndarray) -> np.ndarray:
        """Field values at the directions whose :func:`direction_basis` is ``basis``."""
        return (self._combine(basis) - self.mean) / self.std


@dataclass
class Anatomy:
    """A healthy skull-stripped brain.

    Attributes:
        brain: bool mask ``(X, Y, Z)``.
        fractions: ``csf``, ``gm``, ``wm`` partial-volume fractions (float32, sum 1 in the brain).
        centre: brain centre in voxel coordinates.
        semi_axes: brain semi-axes in voxels.
        bbox: slices of the brain's bounding box (plus a margin), where all image work happens.
    """

    brain: np.ndarray
    fractions: dict[str, np.ndarray]
    centre: np.ndarray
    semi_axes: np.ndarray
    bbox: tuple[slice, slice, slice]

    @property
    def mean_radius(self) -> float:
        """Geometric-mean semi-axis (voxels): the unit tumour sizes are expressed in."""
        return float(np.prod(self.semi_axes) ** (1 / 3))


def make_anatomy(shape: tuple[int, int, int], rng: np.random.Generator, head_scale: float = 1.0,
                 ventricle_scale: float = 1.0) -> Anatomy:
    """Ellipsoidal brain: cortical GM ribbon with gyri-like folds, WM, deep GM, ventricles, sulcal CSF."""
    shape_a = np.asarray(shape)
    centre = (shape_a - 1) / 2.0
    semi = BRAIN_SEMI_AXES * shape_a * head_scale
    # Work only inside the brain's bounding box: it is about half the grid, so everything is ~2x faster.
    lo = np.maximum(0, np.floor(centre - semi * 1.06) - 3).astype(int)
    hi = np.minimum(shape_a, np.ceil(centre + semi * 1.06) + 4).astype(int)
    bbox = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    u, v, w = (((np.arange(a, b) - c) / s).astype(np.float32)
               for a, b, c, s in zip(lo, hi, centre, semi, strict=True))
    u, v, w = u[:, None, None], v[None, :, None], w[None, None, :]
    mean_r = float(np.prod(semi) ** (1 / 3))
    width = 0.5 / mean_r  # about half a voxel, in units of the brain radius: soft tissue borders

    r = np.sqrt(u * u + v * v + w * w)
    r *= 1.0 + 0.03 * smooth_noise(rng, sub, cell=mean_r / 2.5)   # slightly irregular brain outline
    brain_sub = r <= 1.0
    depth = 1.0 - r
    folds = smooth_noise(rng, sub, cell=max(2.0, mean_r / 9))       # gyri-like cortex thickness
    wm = sigmoid((depth + 0.06 * folds - 0.11) / width)
    deep_gm = np.zeros(sub, np.float32)
    csf_vent = np.zeros(sub, np.float32)
    for side in (-1.0, 1.0):
        q = np.sqrt(((u - side * 0.26) / 0.12) ** 2 + (v / 0.17) ** 2 + ((w + 0.02) / 0.13) ** 2)
        deep_gm = np.maximum(deep_gm, sigmoid((1.0 - q) / (width / 0.12)))
        vs = ventricle_scale
        q = np.sqrt(((u - side * 0.10) / (0.07 * vs)) ** 2 + ((v - 0.04) / (0.33 * vs)) ** 2
                    + ((w - 0.10 + 0.3 * v * v) / (0.13 * vs)) ** 2)
        csf_vent = np.maximum(csf_vent, sigmoid((1.0 - q) / (width / (0.08 * vs))))
    wm *= 1.0 - 0.8 * deep_gm
    csf_outer = sigmoid((r - 0.955) / width)
    csf_sulci = sigmoid((-folds - 1.4) / 0.2) * sigmoid((0.1 - depth) / width)
    csf = np.clip(np.maximum(np.maximum(csf_outer, csf_sulci), csf_vent), 0.0, 1.0)

    brain = np.zeros(shape, bool)
    brain[bbox] = brain_sub
    fractions = {}
    for name, frac in (("csf", csf), ("gm", (1 - csf) * (1 - wm)), ("wm", (1 - csf) * wm)):
        full = np.zeros(shape, np.float32)
        full[bbox] = frac * brain_sub
        fractions[name] = full
    return Anatomy(brain, fractions, centre, semi, bbox)


@dataclass
class TumourSpec:
    """Geometry and appearance of one tumour (all sizes relative, see the module docstring).

    ``centre_norm`` is in units of the brain semi-axes; ``r_wt`` is the whole-tumour radius as a
    fraction of :attr:`Anatomy.mean_radius`; ``core_frac`` and ``ncr_frac`` are radii relative to
    the enclosing layer (``ncr_frac`` 0 = no necrosis); ``ecc`` in [0, 1] is how far the necrotic
    core's centre is pushed from the tumour centre towards the brain centre, as a fraction of
    the core radius less the minimal rim; ``et_mode`` is ``rim`` (the whole core rim enhances),
    ``patchy`` (a fraction ``et_patch_frac`` of the outer core enhances) or ``none``;
    ``spot_count`` scales :func:`n_calcifications` (0 = no calcification-like spots) and
    ``spot_depth`` (0..1) scales :data:`SPOT_DEPTH`.
    """

    centre_norm: np.ndarray
    r_wt: float
    core_frac: float
    ncr_frac: float
    ecc: float
    et_mode: str
    et_patch_frac: float
    et_gain: float
    mismatch: float
    het_amp: float
    mgmt_amp: float
    spot_count: float = 0.0
    spot_depth: float = 0.0


# Peak of one blurred impulse, so a single spot reaches full depth at its centre.
_SPOT_SIGMA = 0.9  # voxels
_SPOT_PEAK = float(ndimage.gaussian_filter(np.pad(np.ones((1, 1, 1)), 4), _SPOT_SIGMA).max())


def n_calcifications(r_wt_vox: float, spot_count: float = 1.0) -> int:
    """Number of calcification-like spots of a tumour of whole-tumour radius ``r_wt_vox`` (voxels).

    ``spot_count`` 1 gives 2-20 spots growing with the tumour's cross-section; smaller values fewer
    (at least one); 0 none.
    """
    if spot_count <= 0:
        return 0
    return max(1, int(round(spot_count * np.clip(round(0.05 * r_wt_vox ** 2), 2, 20))))


def render_tumour(anat: Anatomy, spec: TumourSpec, rng: np.random.Generator,
                  normal: dict[str, np.ndarray]) -> np.ndarray:
    """Draw the tumour into the clean images ``normal`` (modified in place); return the uint8 seg.

    Layers: necrotic core (label 1) inside an enhancing rim (4) inside the tumour core, inside
    edema (2). For IDH-mutant tumours the non-enhancing core carries the T2–FLAIR mismatch
    contrast and is labelled edema (2), as BraTS annotators label non-enhancing infiltrative tumour.
    """
    shape = anat.brain.shape
    c = anat.centre + spec.centre_norm * anat.semi_axes
    r_wt = spec.r_wt * anat.mean_radius
    ext = r_wt * 1.9 + 3
    lo = np.maximum(0, np.floor(c - ext)).astype(int)
    hi = np.minimum(shape, np.ceil(c + ext) + 1).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    px, py, pz = ((np.arange(a, b) - ci).astype(np.float32) for a, b, ci in zip(lo, hi, c, strict=True))
    px, py, pz = px[:, None, None], py[None, :, None], pz[None, None, :]
    dist = np.sqrt(px * px + py * py + pz * pz) + 1e-6
    basis = direction_basis(px / dist, py / dist, pz / dist)
    brain = anat.brain[box]

    shape_wt = DirectionalField(rng)
    g_wt = shape_wt(basis)
    t_wt = dist / (r_wt * np.exp(0.22 * g_wt))
    wt = (t_wt <= 1.0) & brain
    shape_tc = DirectionalField(rng)
    r_tc = spec.core_frac * r_wt
    # The core's outline shares part of the whole tumour's lobes, so the layers stay roughly nested.
    rho_tc = np.exp(0.18 * (0.6 * g_wt + 0.8 * shape_tc(basis)))
    t_tc = dist / (r_tc * rho_tc)
    core = (t_tc <= 1.0) & wt

    ncr = np.zeros(sub, bool)
    if spec.ncr_frac > 0:
        r_n = spec.ncr_frac * r_tc
        rim_min = max(1.0, 0.12 * r_tc)  # the rim is never thinner than this (voxels)
        # Offset towards the brain centre (midline / ventricles): the spatial-arrangement signal.
        to_mid = anat.centre - c
        to_mid /= np.linalg.norm(to_mid) + 1e-6
        shape_n = DirectionalField(rng)
        b_mid = direction_basis(*to_mid)
        # The necrosis centre sits ecc x (core radius - minimal rim) from the tumour centre; the
        # part of the necrosis that would reach into the minimal rim is cut off (a crescent).
        reach = r_tc * np.exp(0.18 * (0.6 * shape_wt(b_mid) + 0.8 * shape_tc(b_mid))) - rim_min
        off = to_mid * spec.ecc * max(float(reach), 0.0)
        qx, qy, qz = px - off[0], py - off[1], pz - off[2]
        dn = np.sqrt(qx * qx + qy * qy + qz * qz) + 1e-6
        ncr = dn <= r_n * np.exp(0.15 * shape_n(direction_basis(qx / dn, qy / dn, qz / dn)))
        ncr &= core & (dist <= r_tc * rho_tc - rim_min)
    rim = core & ~ncr
    if spec.et_mode == "rim":
        et = rim
    elif spec.et_mode == "patchy":
        outer = rim & (t_tc > 0.6)
        patch = smooth_noise(rng, sub, cell=max(2.0, r_tc / 2))
        et = np.zeros(sub, bool)
        if outer.any():
            et = outer & (patch > np.quantile(patch[outer], 1.0 - spec.et_patch_frac))
    else:
        et = np.zeros(sub, bool)
    net = rim & ~et
    ed = wt & ~core

    seg = np.zeros(shape, np.uint8)
    seg_box = np.where(wt, 2, 0).astype(np.uint8)
    seg_box[ncr] = 1
    seg_box[et] = 4
    seg[box] = seg_box

    # Soft class weights give a partial-volume edge of about a voxel instead of a staircase.
    weights = {k: ndimage.gaussian_filter(m.astype(np.float32), 0.6)
               for k, m in (("ed", ed), ("net", net), ("et", et), ("ncr", ncr))}
    tumour_w = sum(weights.values())
    # Heterogeneity is coarse (blotches of several voxels) so that it does not mask the MGMT
    # texture, which lives at the finest scales (wavelength ~3 voxels).
    het = smooth_noise(rng, sub, cell=max(3.0, r_wt / 4), sigma_low=0.8)
    band = rng.standard_normal(sub).astype(np.float32)
    band = ndimage.gaussian_filter(band, 0.5) - ndimage.gaussian_filter(band, 1.0)
    if wt.any():
        band /= band[wt].std() + 1e-8
    spots = np.zeros(sub, np.float32)
    inner = wt & (t_wt < 0.65)  # calcifications sit in the bright tumour bulk, not the faint edge
    has_spots = spec.spot_depth > 0 and spec.spot_count > 0
    if has_spots and inner.any():
        idx = np.flatnonzero(inner)
        chosen = rng.choice(idx, size=min(len(idx), n_calcifications(r_wt, spec.spot_count)), replace=False)
        spots.flat[chosen] = 1.0
        spots = ndimage.gaussian_filter(spots, _SPOT_SIGMA)
        spots = np.clip(spots / _SPOT_PEAK, 0.0, 1.0)
    strength = np.clip(1.3 - 0.6 * t_wt, 0.5, 1.0)  # edema fades towards its outer border
    for seq in SEQUENCES:
        base = normal[seq][box]
        table = INTENSITY[seq]
        ed_int = base + strength * (table["ed"] - base)
        if seq == "flair" and spec.mgmt_amp > 0:
            ed_int = ed_int * (1.0 + spec.mgmt_amp * band)
        net_int = (1 - spec.mismatch) * table["ed"] + spec.mismatch * table["net"]
        et_int = table["et"] * (spec.et_gain if seq == "t1ce" else 1.0)
        tum = (weights["ed"] * ed_int + weights["net"] * net_int + weights["et"] * et_int
               + weights["ncr"] * table["ncr"])
        tum *= 1.0 + spec.het_amp * het
        img = base * (1.0 - tumour_w) + tum
        if has_spots:
            img *= 1.0 - spec.spot_depth * SPOT_DEPTH[seq] * spots
        normal[seq][box] = img * brain
    return seg


def healthy_images(anat: Anatomy) -> dict[str, np.ndarray]:
    """Clean images of the healthy brain, one float32 array per sequence (0 outside the brain)."""
    out = {}
    for seq in SEQUENCES:
        t = INTENSITY[seq]
        out[seq] = sum(anat.fractions[k] * np.float32(t[k]) for k in ("csf", "gm", "wm"))
    return out


@dataclass
class ScannerParams:
    """One site's acquisition of one sequence: ``scale`` × image + ``offset`` (inside the brain),
    Gaussian ``noise`` (std, scanner units), ``blur`` (Gaussian sigma, voxels) and ``bias`` (std of
    the log of a smooth multiplicative bias field)."""

    scale: float
    offset: float
    noise: float
    blur: float
    bias: float


def random_scanner(rng: np.random.Generator) -> ScannerParams:
    return ScannerParams(scale=float(rng.uniform(0.75, 1.35)), offset=float(rng.uniform(-60, 60)),
                         noise=float(rng.uniform(10, 35)), blur=float(rng.uniform(0.0, 0.9)),
                         bias=float(rng.uniform(0.03, 0.12)))


def acquire(clean: np.ndarray, anat: Anatomy, p: ScannerParams, rng: np.random.Generator) -> np.ndarray:
    """Apply one site's scanner model to a clean image; background stays exactly 0 (skull-stripped).

    Intensities are rounded to whole units, like the integer-valued scans BraTS ships, which also
    makes the gzip files about half the size.
    """
    box = anat.bbox
    img = clean[box]
    if p.blur > 0.05:
        img = ndimage.gaussian_filter(img, p.blur)
    u, v, w = (np.linspace(-1, 1, n, dtype=np.float32) for n in img.shape)
    u, v, w = u[:, None, None], v[None, :, None], w[None, None, :]
    a = rng.standard_normal(6).astype(np.float32) * np.float32(p.bias / 1.2)
    bias = np.exp(a[0] * u + a[1] * v + a[2] * w + a[3] * u * v + a[4] * (v * w) + a[5] * (u * u - w * w))
    img = img * bias * np.float32(p.scale) + np.float32(p.offset)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(p.noise)
    out = np.zeros(clean.shape, np.float32)
    out[box] = np.rint(np.clip(img, 0, None)) * anat.brain[box]
    return out
