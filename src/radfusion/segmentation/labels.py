"""What an nnU-Net model's inputs and outputs mean in radfusion's terms: channel order and label values.

Channels: nnU-Net feeds channel ``i`` from ``<case>_000i``; the model's ``dataset.json``
``channel_names`` (``{"0": "T1", "1": "T1ce", ...}``) says which sequence that is. Names are matched
case-insensitively with the aliases of :mod:`radfusion.cohort.readers` (``t1n``, ``T1Gd``, ``t2f`` ...),
or given explicitly as ``{sequence: channel}``.

Labels: a model writes its own label values. Label-based models (``{"background": 0, "NCR": 1, "ED":
2, "ET": 3}``) write the values of ``labels``; region-based models (nnU-Net's BraTS datasets,
``{"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}`` with
``regions_class_order``) write the values of ``regions_class_order``. Each written value is mapped to a
tumour part (``NCR``, ``ED``, ``ET``) and then to the cohort's convention (e.g. BraTS 2021: ET = 4).
"""

from __future__ import annotations

import numpy as np

from radfusion.cohort.habitats import convention_labels

# The reader's alias tables are the project's single list of spellings; reuse rather than copy them.
from radfusion.cohort.readers import CHANNEL_ALIASES, convention_from_dataset_json, normalise_name
from radfusion.cohort.subject import SEQUENCES, CohortError

PARTS: tuple[str, ...] = ("NCR", "ED", "ET")


class SegmentationError(ValueError):
    """A problem with a segmentation model or its use on a cohort; the message names model and file."""


def model_channels(dataset_json: dict, source: str, channels: dict[str, int] | None = None,
                   sequences: tuple[str, ...] = SEQUENCES) -> list[str]:
    """The cohort sequence fed to each model channel, in channel order.

    Args:
        dataset_json: the model's ``dataset.json``.
        source: the model folder, for messages.
        channels: explicit ``{sequence: channel index}``; None = from ``channel_names`` by name.
        sequences: the sequences the cohort provides.

    Raises:
        SegmentationError: the model expects channels the cohort cannot provide (wrong count,
            unknown names, two channels that look like one sequence).
    """
    names = dataset_json.get("channel_names") or dataset_json.get("modality")
    if not isinstance(names, dict) or not names:
        raise SegmentationError(f"model {source}: dataset.json has no channel_names")
    n = len(names)
    listing = ", ".join(f"{k}: {v!r}" for k, v in names.items())
    if channels is not None:
        channels = {str(k): int(v) for k, v in dict(channels).items()}
        unknown = sorted(set(channels) - set(sequences))
        if unknown:
            raise SegmentationError(f"segment channels name sequence(s) {unknown} the cohort does not have "
                                    f"(it has {list(sequences)})")
        by_index = {v: k for k, v in channels.items()}
        if sorted(by_index) != list(range(n)) or len(by_index) != len(channels):
            raise SegmentationError(
                f"model {source} expects {n} input channels ({listing}); the channels setting {channels} must "
                f"give each of the indices 0..{n - 1} exactly one cohort sequence")
        return [by_index[i] for i in range(n)]
    if n > len(sequences):
        raise SegmentationError(
            f"model {source} expects {n} input channels ({listing}), but the cohort provides {len(sequences)} "
            f"sequences ({', '.join(sequences)}); use a model trained on these sequences")
    order: list[str] = []
    for idx in range(n):
        name = names.get(str(idx), names.get(idx))
        match = [s for s in sequences if name is not None and normalise_name(name) in CHANNEL_ALIASES.get(s, set())]
        if not match:
            raise SegmentationError(
                f"model {source}: input channel {idx} ({name!r}) matches none of the cohort's sequences "
                f"{list(sequences)} (channels: {listing}); pass segment channels, e.g. "
                "model.channels={t1: 0, t1ce: 1, t2: 2, flair: 3}")
        if match[0] in order:
            raise SegmentationError(f"model {source}: channels {order.index(match[0])} and {idx} both look like "
                                    f"{match[0]} ({listing}); pass model.channels explicitly")
        order.append(match[0])
    return order


def model_output_values(dataset_json: dict) -> list[int]:
    """Foreground label values the model writes (``regions_class_order`` for region-based models)."""
    labels = dataset_json.get("labels") or {}
    if any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values()):
        order = dataset_json.get("regions_class_order")
        if not order:
            return []
        return sorted({int(v) for v in order if int(v) != 0})
    return sorted({int(v) for k, v in labels.items() if k != "ignore" and not isinstance(v, (list, tuple))
                   and int(v) != 0})


def model_label_map(dataset_json: dict, source: str, label_map: dict | None = None) -> dict[int, str]:
    """``{model label value: "NCR" | "ED" | "ET"}`` for every foreground value the model writes.

    Args:
        dataset_json: the model's ``dataset.json``.
        source: the model folder, for messages.
        label_map: explicit mapping (keys may be strings, as YAML gives them); None = derive from
            ``labels`` (names such as necrosis/edema/enhancing, or the BraTS regions).

    Raises:
        SegmentationError: the model writes a value that maps to no tumour part (a model with other labels).
    """
    labels = dataset_json.get("labels")
    outputs = model_output_values(dataset_json)
    if not isinstance(labels, dict) or not outputs:
        raise SegmentationError(f"model {source}: dataset.json has no usable labels ({labels!r}) "
                                "(region-based models also need regions_class_order)")
    if label_map is not None:
        mapping = {}
        for k, v in dict(label_map).items():
            part = str(v).upper()
            if part not in PARTS:
                raise SegmentationError(f"label_map value {v!r} for model label {k} is not one of {list(PARTS)}")
            mapping[int(k)] = part
    else:
        try:
            parts = convention_from_dataset_json(dataset_json, f"model {source} dataset.json")
        except CohortError as err:
            raise SegmentationError(f"{err}. This model's labels {labels} are not tumour sub-regions radfusion "
                                    "knows; if they are, pass model.label_map={1: NCR, 2: ED, 3: ET} "
                                    "(model value: part)") from None
        mapping = {int(v): k for k, v in parts.items()}
    unmapped = [v for v in outputs if v not in mapping]
    if unmapped:
        raise SegmentationError(
            f"model {source} writes label value(s) {unmapped} (dataset.json labels {labels}) that map to no "
            f"tumour part; mapping is {mapping}. Pass model.label_map with every value the model writes")
    return {v: mapping[v] for v in outputs}


def convert_labels(seg: np.ndarray, label_map: dict[int, str], convention: str | dict) -> np.ndarray:
    """Model label values → the cohort's convention (uint8); background and unmapped values → 0.

    Args:
        seg: integer label array of any shape, in the model's values.
        label_map: from :func:`model_label_map`.
        convention: the cohort's label convention (``brats2021``, ``brats2023`` or a dict).
    """
    target = convention_labels(convention)
    seg = np.asarray(seg)
    if seg.size and (seg.min() < 0):
        raise SegmentationError(f"negative label values in a predicted segmentation ({int(seg.min())})")
    size = max([int(seg.max()) if seg.size else 0, *label_map]) + 1
    lut = np.zeros(size, dtype=np.uint8)
    for value, part in label_map.items():
        lut[value] = target[part]
    return lut[seg.astype(np.int64)]
