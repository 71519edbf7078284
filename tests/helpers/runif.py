"""``run_if``: a ``RunIf``-style marker (after Lightning's ``tests_pytorch/helpers/runif.py``) for tests that
need hardware this machine may not have. They are skipped with the reason in the summary, never deleted.

    @run_if(gpu=True, bf16=True)
    def test_on_cuda(): ...

``gpu=True`` also applies the ``gpu`` marker declared in pyproject, so ``-m gpu`` runs exactly these
tests on a CUDA machine and ``-m "not gpu"`` leaves them out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest

F = TypeVar("F", bound=Callable[..., object])


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def skip_reasons(gpu: bool = False, min_gpus: int = 0, bf16: bool = False) -> list[str]:
    """Why a test with these requirements cannot run here (empty when it can)."""
    import torch

    need = max(min_gpus, 1 if (gpu or bf16) else 0)
    have = _cuda_count()
    reasons = []
    if have < need:
        reasons.append(f"needs {need} CUDA device(s), found {have}")
    elif bf16 and not torch.cuda.is_bf16_supported():
        reasons.append("needs a CUDA device with bfloat16 support")
    return reasons


def run_if_marks(gpu: bool = False, min_gpus: int = 0, bf16: bool = False) -> list[pytest.MarkDecorator]:
    """The marks :func:`run_if` applies, as a list, for one case of a parametrised test:
    ``pytest.param(torch.bfloat16, marks=run_if_marks(bf16=True))``."""
    reasons = skip_reasons(gpu=gpu, min_gpus=min_gpus, bf16=bf16)
    marks = [pytest.mark.gpu] if (gpu or bf16 or min_gpus > 0) else []
    marks.append(pytest.mark.skipif(bool(reasons), reason="; ".join(reasons) or "requirements met"))
    return marks


def run_if(gpu: bool = False, min_gpus: int = 0, bf16: bool = False) -> Callable[[F], F]:
    """Decorator: mark the test ``gpu`` (when it needs one) and skip it, with the reason, where the
    requirements are not met.

    Args:
        gpu: needs one CUDA device.
        min_gpus: needs at least this many CUDA devices (implies ``gpu``).
        bf16: needs a CUDA device that supports bfloat16 (implies ``gpu``).
    """
    marks = run_if_marks(gpu=gpu, min_gpus=min_gpus, bf16=bf16)

    def apply(test: F) -> F:
        for mark in marks:
            test = mark(test)
        return test

    return apply
