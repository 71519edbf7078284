"""Negative Cox partial log-likelihood for a risk head (Breslow or Efron handling of tied times).

For subjects ``i`` with log-risk ``r_i``, time ``t_i`` (days) and event indicator ``e_i``, the
Breslow partial log-likelihood is::

    l = sum_{i: e_i = 1} [ r_i - log sum_{j: t_j >= t_i} exp(r_j) ]

and Efron's refinement, for a time ``t`` with ``d`` tied events ``D``, replaces the ``d`` equal
denominators by ``sum_{k=0}^{d-1} log( S - k/d * E )`` with ``S = sum_{j: t_j >= t} exp(r_j)`` and
``E = sum_{i in D} exp(r_i)``. Without ties both are the same.

Numerics: times are sorted once (descending) so that every risk set is a prefix; its log-sum is a
cumulative ``logsumexp`` (no ``exp`` of raw risks, so large risks do not overflow). The Efron term is
computed as ``log S + log1p(-k/d * E/S)`` with ``E/S = exp(log E - log S) <= 1``.

The loss is divided by the number of events (among the unmasked subjects) so that its scale does
not depend on the batch size. A batch without events has no partial likelihood: the function then
returns ``0 * risk.sum()``, a zero that is still attached to the graph (``backward`` works and gives
zero gradients) instead of NaN. See ``docs/survival.md`` for why mini-batches need events.
"""

from __future__ import annotations

import torch

TIES = ("breslow", "efron")


def _validate(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> None:
    # These checks synchronise with the device once per call; a NaN loss mid-run is far costlier.
    if not torch.isfinite(time).all():
        raise ValueError("cox loss: non-finite survival time among unmasked subjects; mask subjects "
                         "without survival data (mask=...)")
    if (time < 0).any():
        raise ValueError(f"cox loss: negative survival time {float(time.min())} among unmasked subjects")
    if not ((event == 0) | (event == 1)).all():
        raise ValueError("cox loss: event indicators must be 0 or 1 (NaN = unknown must be masked)")
    if not torch.isfinite(risk).all():
        raise ValueError("cox loss: non-finite risk score from the model")


def cox_partial_likelihood_loss(
    risk: torch.Tensor,
    time: torch.Tensor,
    event: torch.Tensor,
    mask: torch.Tensor | None = None,
    ties: str = "breslow",
    validate: bool = True,
) -> torch.Tensor:
    """Negative Cox partial log-likelihood divided by the number of events.

    Args:
        risk: ``(B,)`` or ``(B, 1)`` log-risk (log hazard ratio); higher = earlier event.
        time: ``(B,)`` follow-up time (days; any positive unit works, only the order matters).
        event: ``(B,)`` 1 = event observed (death), 0 = censored.
        mask: ``(B,)`` bool/0-1; subjects with ``mask == 0`` (no survival data) are removed before
            anything else, exactly as if they were not in the batch. Their ``time``/``event`` may be NaN.
        ties: ``"breslow"`` or ``"efron"``.
        validate: check for NaN/negative times, non-binary events and non-finite risks (raises
            ``ValueError``); one device sync per call.

    Returns:
        A scalar tensor (dtype of ``risk``). When no unmasked subject has an event it is ``0`` with
        a graph (zero gradients), not NaN.
    """
    if ties not in TIES:
        raise ValueError(f"cox loss: ties must be one of {TIES}, got {ties!r}")
    risk = risk.reshape(-1)
    time = time.reshape(-1).to(device=risk.device)
    event = event.reshape(-1).to(device=risk.device)
    if not (risk.shape == time.shape == event.shape):
        raise ValueError(f"cox loss: risk {tuple(risk.shape)}, time {tuple(time.shape)} and event "
                         f"{tuple(event.shape)} must have the same number of subjects")
    zero = risk.sum() * 0.0
    if mask is not None:
        keep = mask.reshape(-1).to(device=risk.device).bool()
        risk, time, event = risk[keep], time[keep], event[keep]
    if validate:
        _validate(risk, time, event)
    event = event.to(risk.dtype)
    n_events = event.sum()
    if risk.numel() == 0 or float(n_events) == 0:
        return zero

    # Sort once, longest time first: the risk set of subject i ({j: t_j >= t_i}) is then a prefix
    # that ends at the last subject tied with t_i.
    order = torch.argsort(time, descending=True, stable=True)
    r, t, e = risk[order], time[order], event[order]
    _, group, counts = torch.unique_consecutive(t, return_inverse=True, return_counts=True)
    group_end = torch.cumsum(counts, 0) - 1
    log_risk_set = torch.logcumsumexp(r, dim=0)[group_end]  # (G,) log S per distinct time
    log_s = log_risk_set[group]  # (B,) log S of each subject's own time

    if ties == "breslow":
        return -((r - log_s) * e).sum() / n_events

    # Efron: per distinct time, log E = logsumexp of the tied events' risks (shifted per group by
    # its maximum for stability) and d = number of tied events.
    n_groups = counts.shape[0]
    d = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add(0, group, e)
    masked_r = torch.where(e > 0, r, torch.full_like(r, -torch.inf))
    g_max = torch.full((n_groups,), -torch.inf, dtype=r.dtype, device=r.device)
    g_max = g_max.scatter_reduce(0, group, masked_r, reduce="amax", include_self=True)
    shift = torch.where(torch.isfinite(g_max), g_max, torch.zeros_like(g_max)).detach()
    sum_e = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add(
        0, group, e * torch.exp(r - shift[group]))
    ratio = torch.exp(torch.log(sum_e.clamp_min(torch.finfo(r.dtype).tiny)) + shift - log_risk_set)  # E/S
    # k = 0..d-1 for the events of a time: rank of each event within its tie group.
    cum_e = torch.cumsum(e, 0)
    start = group_end - counts + 1
    before = torch.where(start > 0, cum_e[(start - 1).clamp_min(0)], torch.zeros_like(start, dtype=r.dtype))
    k = cum_e - 1 - before[group]
    frac = torch.where(e > 0, k / d[group].clamp_min(1.0), torch.zeros_like(k))
    log_denominator = log_s + torch.log1p(-frac * ratio[group])
    return -((r - log_denominator) * e).sum() / n_events
