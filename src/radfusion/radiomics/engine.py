"""The shared-filtering engine: every habitat of one (subject, sequence) from one set of filtered images.

Per (subject, sequence) *item*:

1. read and preprocess the sequence once (:func:`radfusion.imaging.preprocess.load_preprocessed`:
   1 mm resampling, z-score in the brain); PyRadiomics' own ``normalize``, if on, is applied once
   to the whole sequence;
2. crop once to the whole-tumour box plus ``crop_padding`` voxels (plus the ring width when the
   ``RING`` habitat is on); PyRadiomics' own resampling, if on, resamples that crop once;
3. build the habitat masks on the crop and run PyRadiomics' ``checkMask`` on each;
4. compute each filtered image (LoG per sigma, wavelet sub-bands, ...) once, and extract every
   habitat from it with PyRadiomics' own feature classes (``extractor.computeFeatures``, with the
   equal but faster set-up of :mod:`radfusion.radiomics.classes`), cropped to the habitat exactly
   as ``RadiomicsFeatureExtractor.execute`` crops it; the disjoint habitats' run-length matrices
   come from one shared C call (:mod:`radfusion.radiomics.runlength`);
5. the first sequence's item also holds the shape features, once per habitat, with
   :func:`radfusion.radiomics.mesh.compute_shape` (PyRadiomics' shape class, its O(n²) diameter
   loop replaced by the same values from convex hulls).

Steps 3-5 mirror ``execute`` call for call, so each habitat's features equal ``execute`` on the
same cropped image and habitat mask. ``Original`` features are also crop-invariant (PyRadiomics
crops to the habitat anyway), so they equal ``execute`` on the uncropped image; filtered values
near the crop border depend on the crop, like PyRadiomics' own ``padDistance`` crop before
filtering when it resamples.

Items are cached as JSON: ``<root>/<prep key>/<subject>/<sequence>-<input checksum>.json``. Inside,
each entry (habitat × unit) has its own key, so changing the habitats, the LoG sigmas, the image
types or ``crop_padding`` recomputes only the entries those settings touch.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from radfusion.cache import atomic_write, chunks_sha1, file_sha1, settings_hash
from radfusion.cohort.habitats import RING, habitat_masks
from radfusion.cohort.integrity import check_labels
from radfusion.cohort.subject import GEOMETRY_TOLERANCE, CohortError, Subject
from radfusion.imaging.preprocess import bounding_box, crop, load_preprocessed
from radfusion.radiomics.classes import compute_features
from radfusion.radiomics.mesh import compute_shape
from radfusion.radiomics.pyrad import Plan, Unit, binning_memo
from radfusion.radiomics.runlength import disjoint_group, shared_run_lengths
from radfusion.radiomics.settings import FEATURE_SCHEMA_VERSION, FeatureSettings

#: Layout version of the item JSON files.
ITEM_SCHEMA = 1


def habitat_key(habitat: str, settings: FeatureSettings) -> str:
    """Cache name of a habitat's definition (the ring carries its width)."""
    return f"{RING}@{settings.ring_mm:g}mm" if habitat == RING else habitat


def crop_margin(settings: FeatureSettings, spacing_zyx: tuple[float, ...]) -> list[int]:
    """Voxels of padding around the whole tumour, per numpy axis: ``crop_padding`` plus, with the
    ring, its width in voxels (so every ring voxel has ``crop_padding`` voxels of context)."""
    ring = RING in settings.habitats
    return [settings.crop_padding + (math.ceil(settings.ring_mm / s - 1e-9) if ring else 0) for s in spacing_zyx]


def prep_key(settings: FeatureSettings, plan: Plan) -> str:
    """Hash of what every entry of an item depends on: our preprocessing + PyRadiomics' settings."""
    return settings_hash({"spacing": settings.spacing, "normalize": settings.normalize,
                          "scale": settings.normalize_scale if settings.normalize == "zscore" else None,
                          "pyradiomics": plan.prep_key, "schema": [FEATURE_SCHEMA_VERSION, ITEM_SCHEMA]}, 20)


def input_checksum(paths: list[Path | None], label_convention: str | dict = "brats2021",
                   memo: dict | None = None, chunk_size: int = 1 << 20, brain: str | None = None) -> str:
    """SHA-1 over the contents of ``paths`` (None = absent), the label convention and the brain.

    ``memo`` (path -> sha1) avoids hashing a segmentation once per sequence. The value names the
    item files: SHA-1 of the convention's JSON followed by ``|<file sha1>`` (``|-`` when absent)
    per path, then ``|brain=<brain>`` when ``brain`` (:func:`radfusion.imaging.preprocess.brain_key`)
    is not None: the default brain (non-zero voxels) adds nothing, so existing keys keep their values.
    """
    parts = [json.dumps(label_convention, sort_keys=True)]
    for path in paths:
        if path is None:
            parts.append("|-")
            continue
        digest = memo.get(str(path)) if memo is not None else None
        if digest is None:
            digest = file_sha1(path, chunk_size)
            if memo is not None:
                memo[str(path)] = digest
        parts.append(f"|{digest}")
    if brain is not None:
        parts.append(f"|brain={brain}")
    return chunks_sha1(parts)


def item_path(root: Path, subject_id: str, sequence: str, checksum: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", subject_id)
    return Path(root) / safe / f"{sequence}-{checksum[:20]}.json"


def read_item(path: Path) -> dict | None:
    """A cached item, or None if absent, unreadable or of another layout (then it is recomputed)."""
    try:
        item = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return item if isinstance(item, dict) and item.get("schema") == ITEM_SCHEMA else None


def write_item(path: Path, item: dict) -> None:
    """Write beside the target, then rename: a killed process leaves a stray .tmp, never half a file."""
    with atomic_write(path, "w", fsync=True) as f:
        json.dump(item, f, separators=(",", ":"))


def _box_suffix(box: list | None) -> str:
    return "|box=" + ("none" if box is None else "_".join(f"{a}-{b}" for a, b in box))


def entry_key(hkey: str, unit: Unit | str, box: list | None) -> str:
    """Key of one habitat × unit entry; filtered units also carry the crop box they were computed on."""
    if isinstance(unit, str):  # the shape unit
        return f"{hkey}|{unit}"
    return f"{hkey}|{unit.key}" + (_box_suffix(box) if unit.box_dependent else "")


def _needed(item: dict, settings: FeatureSettings, plan: Plan, with_shape: bool, hkey: str) -> list[str] | None:
    """Entry keys the habitat still lacks in ``item`` (None: unknown until the images are loaded)."""
    voxels = item.get("voxels", {})
    if hkey not in voxels:
        return None
    if voxels[hkey] < settings.min_voxels or hkey in item.get("rejected", {}):
        return []
    keys = [entry_key(hkey, plan.shape_key, None)] if with_shape and plan.shape_key else []
    reseg_rejected = hkey in item.get("reseg_rejected", {})
    if not reseg_rejected:
        keys += [entry_key(hkey, u, item.get("box")) for u in plan.units]
    return [k for k in keys if k not in item.get("entries", {})]


def item_complete(item: dict | None, settings: FeatureSettings, plan: Plan, with_shape: bool,
                  margin: list[int] | None = None) -> bool:
    """True if ``item`` holds every entry ``settings`` asks for (no image needs to be read).

    ``margin`` is the crop margin the settings imply; a stored item cropped with another margin
    has stale filtered entries. None means "same as stored" (it depends on the voxel spacing,
    known once the item has been computed).
    """
    if item is None:
        return False
    if margin is not None and any(u.box_dependent for u in plan.units) and item.get("margin") != margin:
        return False
    for habitat in settings.habitats:
        need = _needed(item, settings, plan, with_shape, habitat_key(habitat, settings))
        if need is None or need:
            return False
    return True


def _mask_image(arr: np.ndarray, ref: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.uint32))
    img.CopyInformation(ref)
    return img


def _pyradiomics_resample(image: sitk.Image, settings: dict) -> sitk.Image:
    """PyRadiomics' ``resampleImage`` applied once to the whole crop (its grid then serves every habitat)."""
    from radiomics import imageoperations

    whole = sitk.Image(image.GetSize(), sitk.sitkUInt32) + 1
    whole.CopyInformation(image)
    resampled, _ = imageoperations.resampleImage(image, whole, **settings)
    return resampled


def compute_entries(image: sitk.Image, masks: dict[str, sitk.Image], plan: Plan, with_shape: bool,
                    box: list | None, wanted: dict[str, set[str]] | None = None,
                    rejected: dict | None = None, reseg_rejected: dict | None = None) -> dict[str, dict]:
    """Features of several habitats on one image, each filter computed once.

    Args:
        image: the (cropped, preprocessed) image all habitats are extracted from.
        masks: habitat key -> binary mask image (0/1) on ``image``'s grid.
        plan: the extraction plan.
        with_shape: compute the shape unit too.
        box: crop box (enters the keys of filtered entries).
        wanted: habitat key -> entry keys to compute (None: all).
        rejected, reseg_rejected: filled with habitat key -> PyRadiomics' reason when its
            ``checkMask`` rejects the mask (or the resegmented mask).

    Returns:
        ``{entry key: {"<imageType>_<class>_<Feature>": value}}``.
    """
    from radiomics import imageoperations

    s = plan.settings
    rejected = {} if rejected is None else rejected
    reseg_rejected = {} if reseg_rejected is None else reseg_rejected
    prepared: dict[str, tuple] = {}
    for hk, mask in masks.items():
        try:
            mask = imageoperations.getMask(mask, **s)
            bbox, corrected = imageoperations.checkMask(image, mask, **s)
        except ValueError as err:
            rejected[hk] = str(err)
            continue
        mask = corrected if corrected is not None else mask
        tex_mask, tex_bbox = mask, bbox
        if s.get("resegmentRange") is not None:
            # Mirrors execute: texture uses the resegmented mask and bounding box (and so does
            # shape's crop); shape uses the resegmented mask only with resegmentShape.
            try:
                tex_mask = imageoperations.resegmentMask(image, mask, **s)
                tex_bbox, _ = imageoperations.checkMask(image, tex_mask, **s)
            except ValueError as err:
                reseg_rejected[hk] = str(err)
                tex_mask = None
        prepared[hk] = (mask, tex_mask, tex_bbox if tex_mask is not None else bbox)
    # Habitats with identical masks (TC = ET without necrosis, WT = TC without edema, ...) have
    # identical features: compute them once and copy (exact, not an approximation).
    same_as = _identical_masks(prepared)

    def want(hk: str, key: str) -> bool:
        return wanted is None or key in wanted.get(hk, set())

    # Disjoint habitats (ET, NCR, ED, ring) share one GLRLM C call per filtered image (runlength.py).
    run_length_group: list[str] = []
    if "glrlm" in plan.extractor.enabledFeatures:
        representatives = {hk: sitk.GetArrayFromImage(p[1]) == 1 for hk, p in prepared.items()
                           if p[1] is not None and same_as[hk] == hk}
        run_length_group = disjoint_group(representatives)
    flat_angles: dict = {}  # habitat -> GLRLM angles along which it is flat (masks only: once per item)

    entries: dict[str, dict] = {}
    if with_shape and plan.shape_key:
        done: dict[str, dict] = {}
        for hk, (mask, tex_mask, bbox) in prepared.items():
            key = entry_key(hk, plan.shape_key, None)
            if want(hk, key):
                if same_as[hk] not in done:
                    shape_mask = tex_mask if s.get("resegmentShape", False) and tex_mask is not None else mask
                    values = compute_shape(plan.extractor, image, shape_mask, bbox, **s)
                    done[same_as[hk]] = {k: float(v) for k, v in values.items()}
                entries[key] = dict(done[same_as[hk]])
    for unit in plan.units:
        todo = {hk: entry_key(hk, unit, box) for hk, p in prepared.items() if p[1] is not None}
        todo = {hk: key for hk, key in todo.items() if want(hk, key)}
        if not todo:
            continue
        args = {**s, **unit.kwargs}
        generate = getattr(imageoperations, f"get{unit.image_type}Image")
        distinct = list(dict.fromkeys(same_as[hk] for hk in todo))
        distinct = [next(hk for hk in todo if same_as[hk] == rep) for rep in distinct]
        groups = [distinct] if unit.shared else [[hk] for hk in distinct]
        for group in groups:
            results: dict[str, dict] = {hk: {} for hk in group}
            # A shared filter ignores the mask it is given; a mask-dependent one gets its habitat's.
            for filtered, name, kwargs in generate(image, prepared[group[0]][1], **args):
                # execute crops without padding (kernelRadius = 0 for segment-based extraction).
                crops = {hk: imageoperations.cropToTumorMask(filtered, prepared[hk][1], prepared[hk][2], padDistance=0)
                         for hk in group}
                together = [hk for hk in group if hk in run_length_group]
                shared = shared_run_lengths({hk: (*crops[hk], _lower_zyx(prepared[hk][2])) for hk in together},
                                            kwargs, flat_angles) if len(together) > 1 else {}
                for hk in group:
                    img_c, mask_c = crops[hk]
                    values = compute_features(plan.extractor, img_c, mask_c, name, run_lengths=shared.get(hk),
                                              **kwargs)
                    results[hk].update({k: float(v) for k, v in values.items()})
            for hk in group:
                for other in todo:
                    if same_as[other] == same_as[hk]:
                        entries[todo[other]] = dict(results[hk])
    return entries


def _lower_zyx(bbox) -> tuple[int, int, int]:
    """Lower corner (z, y, x) of PyRadiomics' bounding box (x_min, x_max, y_min, y_max, z_min, z_max)."""
    return tuple(int(v) for v in np.asarray(bbox)[0::2][::-1])


def _identical_masks(prepared: dict[str, tuple]) -> dict[str, str]:
    """Habitat key -> key of the first habitat whose masks (shape and texture) are identical."""
    signatures: dict[str, str] = {}
    for hk, (mask, tex_mask, bbox) in prepared.items():
        signatures[hk] = chunks_sha1([np.asarray(bbox).tobytes()] + [
            b"|" if m is None else np.ascontiguousarray(sitk.GetArrayViewFromImage(m)).tobytes()
            for m in (mask, tex_mask)])
    first: dict[str, str] = {}
    return {hk: first.setdefault(sig, hk) for hk, sig in signatures.items()}


def compute_item(subject: Subject, sequence: str, with_shape: bool, settings: FeatureSettings, plan: Plan,
                 label_convention: str | dict, cached: dict | None = None,
                 tolerance: float = GEOMETRY_TOLERANCE, brain_mask: str = "auto") -> dict:
    """Compute (or complete) one (subject, sequence) item. See the module doc for the steps.

    Args:
        cached: a previously stored item of the same inputs; its entries that are still valid are
            kept and only the missing ones are computed.
        tolerance: image/mask geometry tolerance, the validated cohort's (``Cohort.geometry_tolerance``);
            not part of the item's cache key, as the values do not depend on it.
        brain_mask: the cohort's ``brain_mask`` choice (``Cohort.brain_mask``): the brain of the z-score;
            a non-default brain is part of the item's key (``input_checksum(..., brain=brain_key(...))``).

    Returns:
        The item: ``{"voxels": {habitat key: n}, "box", "margin", "rejected", "reseg_rejected",
        "entries": {entry key: {feature: value}}, ...}``; voxel counts are on the preprocessed grid,
        ``box`` is ``[[start, stop], ...]`` in (z, y, x) voxels of that grid.

    Raises:
        CohortError: no segmentation, unreadable file, geometry mismatch, NaN intensities, labels
            outside the convention (each message names the subject and the file).
    """
    from radiomics import imageoperations

    sid = subject.subject_id
    if subject.seg is None:
        raise CohortError(f"subject {sid}: no segmentation; habitat features need one")
    images, seg = load_preprocessed(subject, settings.spacing, settings.normalize, settings.normalize_scale,
                                    [sequence], tolerance=tolerance, brain_mask=brain_mask)
    seg_arr = sitk.GetArrayFromImage(seg)
    check_labels(sid, subject.seg, seg_arr, label_convention)
    image = images[sequence]
    # The z-score set everything outside the brain (whichever brain_mask chose) to 0: brain = non-zero,
    # before any shift (without z-score, the file's non-zero voxels).
    brain = sitk.GetArrayViewFromImage(image) != 0
    if plan.normalize:
        image = imageoperations.normalizeImage(image, **plan.settings)
    spacing_zyx = tuple(seg.GetSpacing()[::-1])
    margin = crop_margin(settings, spacing_zyx)
    wt = seg_arr > 0  # every habitat, the ring included, lies in the WT box plus margin
    box = None if not wt.any() else bounding_box(wt, margin)
    box_list = None if box is None else [[s.start, s.stop] for s in box]

    item = dict(cached) if cached else {}
    if item.get("box") != box_list or item.get("margin") != margin:
        # Filtered entries (and rejections on a PyRadiomics-resampled grid) belong to the old crop.
        suffix = _box_suffix(box_list)
        item["entries"] = {k: v for k, v in item.get("entries", {}).items() if "|box=" not in k or k.endswith(suffix)}
        item["rejected"] = {} if plan.resample else item.get("rejected", {})
        item["reseg_rejected"] = {}
    item.update(schema=ITEM_SCHEMA, subject_id=sid, sequence=sequence, box=box_list, margin=margin,
                spacing=list(spacing_zyx))
    item.setdefault("entries", {})
    item.setdefault("rejected", {})
    item.setdefault("reseg_rejected", {})
    keys = {h: habitat_key(h, settings) for h in settings.habitats}
    if box is None:
        item["voxels"] = {**item.get("voxels", {}), **dict.fromkeys(keys.values(), 0)}
        return item

    image_c = crop(image, box)
    masks = habitat_masks(seg_arr[box], label_convention, settings.habitats, spacing=spacing_zyx,
                          ring_mm=settings.ring_mm, brain=brain[box])
    item["voxels"] = {**item.get("voxels", {}), **{keys[h]: int(np.count_nonzero(m)) for h, m in masks.items()}}
    wanted: dict[str, set[str]] = {}
    for hk in keys.values():
        need = _needed(item, settings, plan, with_shape, hk)
        if need:
            wanted[hk] = set(need)
    if not wanted:
        return item
    grid = _pyradiomics_resample(image_c, plan.settings) if plan.resample else image_c
    mask_images = {}
    for h, hk in keys.items():
        if hk in wanted:
            mask_img = _mask_image(masks[h], image_c)
            if plan.resample:
                mask_img = sitk.Resample(mask_img, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                         sitk.sitkUInt32)
            mask_images[hk] = mask_img
    try:
        # The binning memo lives for this item only: PyRadiomics is left as it was afterwards.
        with binning_memo(settings.memo_binning):
            new = compute_entries(grid, mask_images, plan, with_shape, box_list, wanted, item["rejected"],
                                  item["reseg_rejected"])
    except Exception as err:
        raise RuntimeError(f"subject {sid}: PyRadiomics failed on {subject.images[sequence]} "
                           f"({type(err).__name__}: {err})") from err
    item["entries"].update(new)
    return item
