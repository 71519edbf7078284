"""Run a trained nnU-Net v2 model on one subject: cohort sequences in, a mask in the cohort's convention out.

A model folder is what ``nnUNetv2_train`` leaves in ``nnUNet_results/DatasetXXX_Name/
<trainer>__<plans>__<configuration>/``: ``dataset.json``, ``plans.json`` and ``fold_<k>/<checkpoint>``.
Prediction uses nnU-Net's own ``nnUNetPredictor`` (its preprocessing, sliding window, mirroring, fold
ensembling and resampling back to the input grid); radfusion adds the checks that name the problem
(missing folder or fold, a model whose channels or labels do not fit the cohort), the channel order,
the label conversion and the provenance record.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from radfusion.cache import file_sha1
from radfusion.cohort.subject import Subject, read_image
from radfusion.safe_load import UnsafeLoadError, load_torch_file
from radfusion.segmentation.labels import SegmentationError, convert_labels, model_channels, model_label_map

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` (``cuda:1``) or ``auto`` (CUDA when available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SegmentationError(f"segmentation device {device!r} requested but CUDA is not available; use device=cpu")
    return dev


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SegmentationError(f"{what}: cannot read {path}: {err}") from None


class NNUNetSegmenter:
    """A trained nnU-Net v2 model, checked against the cohort before any prediction.

    Args:
        model_folder: the ``<trainer>__<plans>__<configuration>`` folder.
        folds: folds to ensemble (``fold_<k>`` sub-folders); ``"all"`` is allowed as a fold name.
        checkpoint: checkpoint file name inside each fold folder.
        label_map: ``{model value: NCR|ED|ET}``; None = from dataset.json (names or BraTS regions).
        channels: ``{sequence: channel index}``; None = from dataset.json ``channel_names``.
        device: ``cpu``, ``cuda`` or ``auto``.
        use_mirroring: test-time mirroring along the axes the checkpoint allows (nnU-Net's default;
            8 passes per patch in 3D, so off is ~8x faster on CPU and slightly less accurate).
        tile_step_size: sliding-window overlap (nnU-Net's 0.5 default).
        allow_unsafe_load: read checkpoints that the weights-only unpickler refuses (they may execute
            code; trusted files only). Off: checkpoints load as data (:mod:`radfusion.safe_load`).

    The network is loaded on first use, so a wrong configuration fails at once and cheaply.
    """

    def __init__(self, model_folder: str | Path, folds: Sequence[int | str] = (0,),
                 checkpoint: str = "checkpoint_final.pth", label_map: dict | None = None,
                 channels: dict[str, int] | None = None, device: str = "auto", use_mirroring: bool = True,
                 tile_step_size: float = 0.5, allow_unsafe_load: bool = False) -> None:
        self.allow_unsafe_load = bool(allow_unsafe_load)
        folder = Path(model_folder).expanduser()
        if not folder.is_dir():
            raise SegmentationError(
                f"nnU-Net model folder {folder} does not exist; give the trained model's "
                "<trainer>__<plans>__<configuration> folder (with dataset.json, plans.json, fold_<k>/)")
        self.folder = folder.resolve()
        for name in ("dataset.json", "plans.json"):
            if not (self.folder / name).is_file():
                raise SegmentationError(f"nnU-Net model folder {self.folder} has no {name}")
        self.dataset_json = _read_json(self.folder / "dataset.json", f"model {self.folder}")
        self.plans = _read_json(self.folder / "plans.json", f"model {self.folder}")
        folds = [folds] if isinstance(folds, (int, str)) else list(folds)
        self.folds = [f if str(f) == "all" else int(f) for f in folds]
        if not self.folds:
            raise SegmentationError(f"model {self.folder}: no folds given")
        self.checkpoint = checkpoint
        self.checkpoints = [self.folder / f"fold_{f}" / checkpoint for f in self.folds]
        missing = [str(p) for p in self.checkpoints if not p.is_file()]
        if missing:
            found = sorted(p.name for p in self.folder.glob("fold_*/*.pth"))
            raise SegmentationError(f"model {self.folder}: checkpoint(s) {missing} do not exist "
                                    f"(checkpoints present: {found or 'none'})")
        self.channel_sequences = model_channels(self.dataset_json, str(self.folder), channels)
        self.label_map = model_label_map(self.dataset_json, str(self.folder), label_map)
        self._info: dict = self._inspect_checkpoint()
        self.device = resolve_device(device)
        self.use_mirroring = bool(use_mirroring)
        self.tile_step_size = float(tile_step_size)
        self._predictor = None

    def _read_checkpoint(self, path: Path) -> dict:
        """One fold's checkpoint, read without executing code in it (``allow_unsafe_load`` opts out)."""
        try:
            return load_torch_file(path, "nnU-Net checkpoint", allow_unsafe_load=self.allow_unsafe_load)
        except UnsafeLoadError as err:
            raise SegmentationError(f"model {self.folder}: {err} (scripts/segment.py: model.allow_unsafe_load=true)"
                                    ) from None
        except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to the user
            raise SegmentationError(f"model {self.folder}: cannot read checkpoint {path} ({type(err).__name__}: "
                                    f"{err})") from None

    def _inspect_checkpoint(self) -> dict:
        """Trainer, configuration and input channels of the first checkpoint (checked against dataset.json)."""
        path = self.checkpoints[0]
        ckpt = self._read_checkpoint(path)
        if not isinstance(ckpt, dict) or "network_weights" not in ckpt or "init_args" not in ckpt:
            raise SegmentationError(f"model {self.folder}: {path} is not an nnU-Net v2 checkpoint "
                                    "(needs network_weights, init_args, trainer_name)")
        info = {"trainer": ckpt.get("trainer_name", ""), "configuration": ckpt["init_args"].get("configuration", "")}
        # The first 5-D weight is the first 3-D convolution: its second axis is the network's input channels.
        first = next((w for w in ckpt["network_weights"].values() if getattr(w, "ndim", 0) == 5), None)
        n = len(self.channel_sequences)
        if first is not None and int(first.shape[1]) != n:
            raise SegmentationError(f"model {self.folder}: the network in {path} expects {int(first.shape[1])} input "
                                    f"channels but dataset.json lists {n} ({self.dataset_json.get('channel_names')})")
        return info

    # ------------------------------------------------------------------ provenance
    @property
    def provenance(self) -> dict[str, str]:
        """What produced a mask: model folder, folds, checkpoint name and SHA-1, trainer, configuration."""
        if "sha1" not in self._info:
            self._info["sha1"] = ";".join(file_sha1(p) for p in self.checkpoints)
        return {
            "seg_model": str(self.folder),
            "seg_folds": ",".join(str(f) for f in self.folds),
            "seg_checkpoint": self.checkpoint,
            "seg_checkpoint_sha1": self._info["sha1"],
            "seg_trainer": str(self._info.get("trainer", "")),
            "seg_configuration": str(self._info.get("configuration", "")),
            "seg_label_map": json.dumps({str(k): v for k, v in self.label_map.items()}),
            "seg_tool": f"nnunetv2 {version('nnunetv2')}",
        }

    # ------------------------------------------------------------------ prediction
    def load(self):
        """Load the network (once); raises :class:`SegmentationError` if nnU-Net cannot."""
        if self._predictor is not None:
            return self._predictor
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        buf = io.StringIO()  # nnU-Net prints; keep its chatter for the debug log
        with contextlib.redirect_stdout(buf):
            predictor = nnUNetPredictor(tile_step_size=self.tile_step_size, use_gaussian=True,
                                        use_mirroring=self.use_mirroring,
                                        perform_everything_on_device=self.device.type == "cuda",
                                        device=self.device, verbose=False, verbose_preprocessing=False,
                                        allow_tqdm=False)
            try:
                self._initialize(predictor)
            except SegmentationError:
                raise
            except (KeyError, RuntimeError, ValueError, TypeError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise SegmentationError(f"model {self.folder}: nnU-Net cannot load it ({type(err).__name__}: "
                                        f"{first}); is it an nnU-Net v2 results folder whose checkpoint matches "
                                        "its plans.json and dataset.json?") from None
        log.debug("nnU-Net: %s", buf.getvalue().strip())
        if predictor.configuration_manager.previous_stage_name is not None:
            raise SegmentationError(f"model {self.folder}: configuration {self._info['configuration']!r} is a cascade "
                                    "stage (needs the previous stage's masks); use a 3d_fullres model")
        self._predictor = predictor
        return predictor

    def _initialize(self, predictor) -> None:
        """What nnU-Net's ``initialize_from_trained_model_folder`` does, except that the fold checkpoints
        are read by :meth:`_read_checkpoint` (nnU-Net's reader runs the full unpickler on them)."""
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        checkpoints = [self._read_checkpoint(p) for p in self.checkpoints]
        first = checkpoints[0]
        plans = PlansManager(_read_json(self.folder / "plans.json", f"model {self.folder}"))
        configuration = plans.get_configuration(first["init_args"]["configuration"])
        n_in = determine_num_input_channels(plans, configuration, self.dataset_json)
        n_out = plans.get_label_manager(self.dataset_json).num_segmentation_heads
        trainer_class = recursive_find_trainer_class_by_name(first["trainer_name"])
        if trainer_class is None:
            raise RuntimeError(f"nnU-Net trainer class {first['trainer_name']!r} is not installed")
        if "plans_manager" in inspect.signature(trainer_class.build_network_architecture).parameters:
            network = trainer_class.build_network_architecture(plans, configuration, n_in, n_out,
                                                               enable_deep_supervision=False)
        else:  # trainers written for nnU-Net's older signature
            network = trainer_class.build_network_architecture(
                configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
                configuration.network_arch_init_kwargs_req_import, n_in, n_out, enable_deep_supervision=False)
        parameters = [c["network_weights"] for c in checkpoints]
        network.load_state_dict(parameters[0])
        predictor.manual_initialization(network, plans, configuration, parameters, self.dataset_json,
                                        first["trainer_name"], first.get("inference_allowed_mirroring_axes"))

    def predict(self, subject: Subject, convention: str | dict) -> tuple[sitk.Image, float]:
        """Segment one subject.

        Returns:
            ``(mask, seconds)``: a uint8 label image in ``convention`` on the grid of the subject's
            first model channel (same size, spacing, origin, direction), and the time taken.

        Raises:
            SegmentationError / CohortError: missing or unreadable sequence, naming subject and file.
        """
        sid = subject.subject_id
        missing = [s for s in self.channel_sequences if s not in subject.images]
        if missing:
            raise SegmentationError(f"subject {sid}: the model needs sequence(s) {missing}, which the cohort lacks")
        predictor = self.load()
        files = [str(subject.images[s]) for s in self.channel_sequences]
        reference = read_image(Path(files[0]), sid)
        t0 = time.perf_counter()
        rw = predictor.plans_manager.image_reader_writer_class()
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            try:
                data, props = rw.read_images(files)
            except RuntimeError:
                raise SegmentationError(f"subject {sid}: nnU-Net cannot read {files} together (shapes or spacings "
                                        f"differ): {buf.getvalue().strip()[-300:]}") from None
            seg = predictor.predict_single_npy_array(data, props, None, None, False)
        log.debug("nnU-Net %s: %s", sid, buf.getvalue().strip()[-2000:])
        seg = np.asarray(seg)
        if seg.shape != tuple(reversed(reference.GetSize())):
            raise SegmentationError(f"subject {sid}: nnU-Net returned shape {seg.shape}, image {files[0]} has "
                                    f"{tuple(reversed(reference.GetSize()))}")
        mask = sitk.GetImageFromArray(convert_labels(seg, self.label_map, convention))
        mask.CopyInformation(reference)
        return mask, time.perf_counter() - t0
