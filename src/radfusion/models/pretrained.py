"""Pretrained encoder weights from a **local path** (nothing is ever downloaded).

Two sources:

- plain state dicts (MedicalNet, MONAI bundles, SwinUNETR self-supervised weights, a radfusion /
  Lightning checkpoint): keys are matched to the encoder's own keys after finding the prefix the file
  puts in front of them (``module.``, ``net.encoder.net.``, ``swinViT.`` ...). Partial loading is
  the rule, so :func:`load_matching` returns a report of which keys matched, which were skipped and
  why, and which of the encoder's keys stayed randomly initialised.
- a trained **nnU-Net v2** model (``checkpoint_final.pth`` with ``network_weights`` + ``plans.json``):
  :func:`load_nnunet_network` rebuilds the network with nnU-Net's own ``get_network_from_plans``
  (dynamic-network-architectures) and loads the weights, so the segmentation model a BraTS user has
  already trained becomes the feature extractor (see :class:`radfusion.models.encoders.NNUNetEncoder`).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from radfusion.safe_load import UnsafeLoadError, load_torch_file

log = logging.getLogger(__name__)

# Containers that checkpoints of common tools put the weights in.
_STATE_KEYS = ("state_dict", "model_state_dict", "network_weights", "model", "net", "weights")


class PretrainedError(RuntimeError):
    """A pretrained-weights file that cannot be used; the message names the file and what to do."""


def _torch_load(path: Path, allow_unsafe_load: bool = False) -> object:
    """The file's contents without executing code in it (numpy scalars of nnU-Net's log included);
    anything more needs the user's explicit ``allow_unsafe_load`` (:mod:`radfusion.safe_load`)."""
    try:
        return load_torch_file(path, "pretrained weights", allow_unsafe_load=allow_unsafe_load)
    except FileNotFoundError as err:
        raise PretrainedError(f"pretrained weights not found: {path} (weights are read from a local path only; "
                              "nothing is downloaded)") from err
    except UnsafeLoadError as err:
        raise PretrainedError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - a corrupt or foreign file means the same to the user
        raise PretrainedError(f"cannot read pretrained weights {path}: {type(err).__name__}: {err}") from err


def read_state_dict(path: str | Path, allow_unsafe_load: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file, unwrapped from the usual checkpoint containers."""
    path = Path(path)
    obj = _torch_load(path, allow_unsafe_load)
    for _ in range(3):  # e.g. {"state_dict": {"model": {...}}}
        if isinstance(obj, dict):
            inner = next((obj[k] for k in _STATE_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, dict):
        raise PretrainedError(f"{path}: expected a state dict (mapping of names to tensors), got {type(obj).__name__}")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise PretrainedError(f"{path}: no tensors found (keys: {list(obj)[:8]})")
    return state


def _best_prefix(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> str:
    """The prefix ``p`` for which most ``p + target_key`` exist in ``source`` with the same shape."""
    votes: Counter[str] = Counter()
    for key, value in source.items():
        parts = key.split(".")
        for i in range(len(parts)):
            tail = ".".join(parts[i:])
            if tail in target and target[tail].shape == value.shape:
                votes[".".join(parts[:i]) + ("." if i else "")] += 1
    if not votes:
        return ""
    # Most matches first; among equals the shortest prefix (fewest assumptions).
    return min(votes, key=lambda p: (-votes[p], len(p)))


def _adapt_in_channels(weight: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """Conv weight ``(O, Cs, k...)`` → ``(O, Ct, k...)`` by averaging and repeating input channels.

    A single-channel model (MedicalNet was trained on one MRI sequence) then responds to the mean of
    our four sequences the way it responded to one; the ``Cs / Ct`` factor keeps activations' scale.
    """
    if weight.dim() < 3 or weight.dim() != len(shape):
        return None
    if weight.shape[0] != shape[0] or weight.shape[2:] != shape[2:]:
        return None
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, shape[1], *([1] * (weight.dim() - 2))) * (weight.shape[1] / shape[1])


def match_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                     adapt_in_channels: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """Map a foreign state dict onto ``target``'s keys.

    Returns ``(state, report)``: the tensors to load (target names) and a report
    ``{prefix, matched, adapted, skipped: {source_key: reason}, missing}`` where ``missing`` lists the
    target keys that keep their current (random) values.
    """
    prefix = _best_prefix(source, target)
    state: dict[str, torch.Tensor] = {}
    adapted, skipped = [], {}
    for key, value in source.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        if name is None or name not in target:
            skipped[key] = "not in encoder"
            continue
        want = target[name].shape
        if value.shape == want:
            state[name] = value
        elif adapt_in_channels and (new := _adapt_in_channels(value, want)) is not None:
            state[name] = new
            adapted.append(name)
        else:
            skipped[key] = f"shape {tuple(value.shape)} vs encoder {tuple(want)}"
    report = {"prefix": prefix, "matched": sorted(state), "adapted": adapted, "skipped": skipped,
              "missing": sorted(set(target) - set(state))}
    return state, report


def load_matching(module: nn.Module, path: str | Path, adapt_in_channels: bool = True,
                  allow_unsafe_load: bool = False) -> dict:
    """Load every compatible tensor of a local weights file into ``module``; return the report.

    Raises :class:`PretrainedError` when nothing matches (a wrong file is an error, not a silent
    random initialisation).
    """
    source = read_state_dict(path, allow_unsafe_load)
    target = module.state_dict()
    state, report = match_state_dict(source, target, adapt_in_channels)
    n_params = sum(1 for k in target if not k.endswith("num_batches_tracked"))
    n_loaded = sum(1 for k in state if not k.endswith("num_batches_tracked"))
    if not n_loaded:
        examples = list(source)[:5]
        raise PretrainedError(f"{path}: no tensor matches the encoder (file keys e.g. {examples}, encoder keys e.g. "
                              f"{list(target)[:5]}); is this the right architecture/width?")
    module.load_state_dict(state, strict=False)
    log.info("pretrained %s: loaded %d/%d encoder tensors (prefix %r, %d adapted to the input channels), "
             "%d file tensors skipped", path, n_loaded, n_params, report["prefix"], len(report["adapted"]),
             len(report["skipped"]))
    if report["skipped"]:
        log.info("skipped: %s", "; ".join(f"{k} ({v})" for k, v in list(report["skipped"].items())[:10]))
    return report


# ---------------------------------------------------------------------------------------- nnU-Net
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PretrainedError(f"cannot read {path}: {err}") from err


def load_nnunet_network(checkpoint: str | Path, plans: str | Path | None = None,
                        configuration: str | None = None, allow_unsafe_load: bool = False) -> tuple[nn.Module, dict]:
    """Rebuild a trained nnU-Net v2 network from ``checkpoint_final.pth`` and its plans.

    Args:
        checkpoint: ``.../<trainer>__<plans>__<config>/fold_N/checkpoint_final.pth`` (or ``_best``).
        plans: ``plans.json``; default: the plans stored in the checkpoint, else ``../plans.json``
            next to the fold folder (nnU-Net's results layout).
        configuration: e.g. ``3d_fullres``; default: the one the checkpoint was trained with.

    Returns:
        ``(network, info)`` with the weights loaded; ``info`` has ``configuration``, ``input_channels``,
        ``features_per_stage``, ``network_class``.
    """
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    checkpoint = Path(checkpoint)
    ckpt = _torch_load(checkpoint, allow_unsafe_load)
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
        raise PretrainedError(f"{checkpoint}: not an nnU-Net v2 checkpoint (no 'network_weights'; "
                              "expected fold_N/checkpoint_final.pth)")
    init_args = ckpt.get("init_args") or {}
    if plans is not None:
        plans_dict = _read_json(Path(plans))
    elif isinstance(init_args.get("plans"), dict):
        plans_dict = init_args["plans"]
    elif (checkpoint.parent.parent / "plans.json").is_file():
        plans_dict = _read_json(checkpoint.parent.parent / "plans.json")
    else:
        raise PretrainedError(f"{checkpoint}: no plans in the checkpoint and no plans.json beside the fold folder; "
                              "pass model.encoder.plans=/path/to/plans.json")
    configuration = configuration or init_args.get("configuration")
    manager = PlansManager(plans_dict)
    if configuration is None:
        names = list(plans_dict.get("configurations", {}))
        if len(names) != 1:
            raise PretrainedError(f"{checkpoint}: which configuration? plans have {names}; "
                                  "set model.encoder.configuration")
        configuration = names[0]
    try:
        config = manager.get_configuration(configuration)
    except (RuntimeError, ValueError) as err:
        raise PretrainedError(f"{checkpoint}: {err}") from err

    # Strip wrappers that nnU-Net itself unwraps (torch.compile, DDP) before saving, in case a fork did not.
    weights = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in ckpt["network_weights"].items()}
    convs = [v for k, v in weights.items() if k.startswith("encoder.") and v.dim() >= 3]
    if not convs:
        raise PretrainedError(f"{checkpoint}: no encoder convolution weights in network_weights")
    input_channels = int(convs[0].shape[1])
    heads = [v for k, v in weights.items() if k.startswith("decoder.seg_layers.") and k.endswith("weight")]
    output_channels = int(heads[-1].shape[0]) if heads else 1
    network = get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                     config.network_arch_init_kwargs_req_import, input_channels, output_channels,
                                     allow_init=True, deep_supervision=False)
    missing, unexpected = network.load_state_dict(weights, strict=False)
    enc_missing = [k for k in missing if k.startswith("encoder.")]
    if enc_missing:
        raise PretrainedError(f"{checkpoint}: the plans' {config.network_arch_class_name} does not match the "
                              f"weights (encoder keys missing, e.g. {enc_missing[:3]}); wrong plans.json?")
    if unexpected:
        log.warning("%s: %d checkpoint tensors not used by the rebuilt network (e.g. %s)", checkpoint,
                    len(unexpected), unexpected[:3])
    info = {"configuration": configuration, "input_channels": input_channels,
            "features_per_stage": list(network.encoder.output_channels),
            "network_class": config.network_arch_class_name,
            "spacing": list(getattr(config, "spacing", []) or []),
            "channel_names": ((init_args.get("dataset_json") or {}).get("channel_names"))}
    log.info("nnU-Net %s (%s) from %s: %d input channels, encoder stages %s", info["network_class"].rsplit(".", 1)[-1],
             configuration, checkpoint, input_channels, info["features_per_stage"])
    return network, info
