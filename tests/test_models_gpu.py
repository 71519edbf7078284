"""The hybrid model on a CUDA device under mixed precision: one forward and backward agrees with the fp32 CPU
pass, so that ``trainer=gpu`` (``precision: 16-mixed``) or bf16 trains the same network the CPU tests check.
Skipped, with the reason, where there is no CUDA device (``helpers.runif.run_if``)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F

from helpers.runif import run_if, run_if_marks
from radfusion.models.encoders import ResNetEncoder
from radfusion.models.fusion import ConcatFusion, CrossAttentionFusion, FusionNet

# Bounds per autocast dtype, from the same comparison under CPU autocast (bf16: logits within 4e-3 of fp32,
# gradients per branch at cosine >= 0.94 and norms within 2%; fp16: 4e-4, 0.998, 0.3%). They leave room for
# CUDA kernels' reduction orders and still fail for a lost or non-finite gradient, a branch left out of the
# backward pass, or a loss computed in half precision.
TOLERANCE = {  # dtype: (logit atol, min gradient cosine per branch, max relative gradient-norm gap)
    torch.bfloat16: (0.02, 0.9, 0.05),
    torch.float16: (0.005, 0.99, 0.02),
}


def mixed_precision_pass(net: FusionNet, device: str, dtype: torch.dtype | None, image: torch.Tensor,
                         radiomics: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits (as fp32, on the CPU) and the parameter gradients (by name, on the CPU) of one BCE forward +
    backward under ``torch.autocast(device, dtype)`` (plain fp32 when ``dtype`` is None)."""
    net = copy.deepcopy(net).to(device)
    net.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = net(image=image.to(device), radiomics=radiomics.to(device))
    if dtype is not None:
        assert logits.dtype == dtype, "autocast did not run the head in reduced precision"
    loss = F.binary_cross_entropy_with_logits(logits.float(), labels.to(device))
    loss.backward()
    grads = {name: p.grad for name, p in net.named_parameters() if p.requires_grad}
    missing = [name for name, g in grads.items() if g is None or g.dtype != torch.float32]
    assert not missing, f"no fp32 gradient for {missing}"
    return logits.detach().float().cpu(), {name: g.cpu() for name, g in grads.items()}


@run_if(gpu=True)
# attention dropout off: train mode must be deterministic for the two passes to be comparable
@pytest.mark.parametrize("fuser", [ConcatFusion, functools.partial(CrossAttentionFusion, dropout=0.0)],
                         ids=["concat", "attention"])
@pytest.mark.parametrize("dtype", [pytest.param(torch.bfloat16, marks=run_if_marks(bf16=True), id="bf16"),
                                   pytest.param(torch.float16, id="fp16")])
def test_hybrid_forward_backward_on_cuda_matches_cpu(fuser, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    # train mode (batch-norm batch statistics, the path Lightning trains), no dropout: both passes deterministic
    net = FusionNet("hybrid", n_outputs=2, encoder=ResNetEncoder(block_inplanes=(4, 8, 8, 16)), radiomics_dim=10,
                    dropout=0.0, fuser=fuser).train()
    image, radiomics = torch.randn(4, 4, 16, 16, 16), torch.randn(4, 10)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])

    cpu_logits, cpu_grad = mixed_precision_pass(net, "cpu", None, image, radiomics, labels)
    gpu_logits, gpu_grad = mixed_precision_pass(net, "cuda", dtype, image, radiomics, labels)

    atol, min_cosine, max_gap = TOLERANCE[dtype]
    torch.testing.assert_close(gpu_logits, cpu_logits, atol=atol, rtol=0.0)
    # branch by branch (encoder, image projection or attention, radiomics MLP, head): the encoder's many
    # small gradients are where reduced precision shows first, and a whole-vector cosine would hide them
    for branch in sorted({name.split(".")[0] for name in cpu_grad}):
        names = [name for name in cpu_grad if name.split(".")[0] == branch]
        gpu_flat, cpu_flat = (torch.cat([g[name].flatten() for name in names]) for g in (gpu_grad, cpu_grad))
        assert torch.isfinite(gpu_flat).all(), f"{branch}: non-finite gradient"
        cosine = F.cosine_similarity(gpu_flat, cpu_flat, dim=0).item()
        gap = (abs(gpu_flat.norm() - cpu_flat.norm()) / cpu_flat.norm()).item()
        assert cosine >= min_cosine and gap <= max_gap, f"{branch}: gradient cosine {cosine:.4f}, norm gap {gap:.1%}"
