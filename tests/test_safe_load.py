"""No torch file is unpickled with code execution unless the user opts in (``allow_unsafe_load``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from helpers.paths import ROOT
from radfusion.models.pretrained import PretrainedError, read_state_dict
from radfusion.safe_load import UnsafeLoadError, load_torch_file


@dataclass
class Pickled:
    """An arbitrary Python object: loading it needs the full unpickler (it could as well run code)."""

    weights: dict


def test_pickle_only_file_needs_the_explicit_opt_in(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save(Pickled({"conv.weight": torch.ones(2, 2)}), path)
    with pytest.raises(UnsafeLoadError, match="allow_unsafe_load=true") as err:
        load_torch_file(path, "pretrained weights")
    assert str(path) in str(err.value) and "execute code" in str(err.value)
    # The pretrained-weights path says the same, as its own error type.
    with pytest.raises(PretrainedError, match="allow_unsafe_load"):
        read_state_dict(path)
    obj = load_torch_file(path, allow_unsafe_load=True)
    assert isinstance(obj, Pickled) and torch.equal(obj.weights["conv.weight"], torch.ones(2, 2))


def test_nnunet_style_checkpoint_loads_as_data(tmp_path):
    """numpy scalars and arrays (nnU-Net's training log) and a torch.device are data, not code."""
    path = tmp_path / "checkpoint_final.pth"
    ckpt = {"network_weights": {"encoder.w": torch.arange(3.0)}, "_best_ema": np.float64(0.81),
            "logging": {"ema_fg_dice": [np.float32(0.5), np.float64(0.7)], "dice": np.array([0.1, 0.2])},
            "init_args": {"device": torch.device("cpu"), "fold": 0}}
    torch.save(ckpt, path)
    with pytest.raises(Exception):  # noqa: B017 - torch's bare weights-only load refuses the numpy types
        torch.load(path, weights_only=True)
    out = load_torch_file(path)
    assert out["_best_ema"] == pytest.approx(0.81)
    assert np.array_equal(out["logging"]["dice"], [0.1, 0.2])
    assert torch.equal(read_state_dict(path)["encoder.w"], torch.arange(3.0))


def test_no_unsafe_torch_load_outside_the_opt_in():
    """``grep -rn "weights_only=False" src/ scripts/``: only the opt-in branch of radfusion.safe_load."""
    hits = []
    for folder in ("src", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"weights_only\s*=\s*False", line):
                    hits.append(f"{path.relative_to(ROOT)}:{n}")
    assert len(hits) == 1 and hits[0].startswith("src/radfusion/safe_load.py:"), hits
