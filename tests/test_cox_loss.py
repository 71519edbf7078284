"""The Cox partial likelihood loss against scikit-survival, lifelines and a brute-force formula."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from radfusion.models.cox_loss import cox_partial_likelihood_loss


def _brute_force_loglik(r: np.ndarray, t: np.ndarray, e: np.ndarray, ties: str) -> float:
    """Partial log-likelihood written directly from the textbook definition (O(n^2) loops)."""
    total = 0.0
    for time in np.unique(t[e == 1]):
        events = np.where((t == time) & (e == 1))[0]
        at_risk = np.where(t >= time)[0]
        s = np.exp(r[at_risk]).sum()
        total += r[events].sum()
        if ties == "breslow":
            total -= len(events) * np.log(s)
        else:
            tied = np.exp(r[events]).sum()
            total -= sum(np.log(s - k / len(events) * tied) for k in range(len(events)))
    return total


def _whas500() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sksurv.datasets import load_whas500
    from sksurv.preprocessing import OneHotEncoder

    X, y = load_whas500()  # shipped with scikit-survival: no download
    X = OneHotEncoder().fit_transform(X).to_numpy(dtype=np.float64)
    X = (X - X.mean(0)) / X.std(0)
    return X, y["lenfol"].astype(np.float64), y["fstat"].astype(np.float64)


def _fit_linear_cox(X: np.ndarray, t: np.ndarray, e: np.ndarray, ties: str) -> np.ndarray:
    """Full-batch LBFGS (float64) on radfusion's loss until the gradient vanishes."""
    Xt, tt, et = (torch.from_numpy(a) for a in (X, t, e))
    beta = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([beta], lr=1.0, max_iter=1000, tolerance_grad=1e-12, tolerance_change=1e-16,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = cox_partial_likelihood_loss(Xt @ beta, tt, et, ties=ties)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    closure()
    assert beta.grad.abs().max() < 1e-7, f"LBFGS did not converge: |grad| {beta.grad.abs().max():.2e}"
    return beta.detach().numpy()


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_linear_cox_reproduces_sksurv_coefficients_on_whas500(ties):
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    X, t, e = _whas500()
    ours = _fit_linear_cox(X, t, e, ties)
    ref = CoxPHSurvivalAnalysis(alpha=0.0, ties=ties, n_iter=200, tol=1e-12)
    ref.fit(X, Surv.from_arrays(event=e.astype(bool), time=t))
    diff = np.abs(ours - ref.coef_)
    assert diff.max() < 1e-3, f"max |coef difference| {diff.max():.2e} ({ties})"
    # The fit is not trivial: several coefficients are far from zero.
    assert np.sum(np.abs(ref.coef_) > 0.1) >= 3


def test_efron_loglik_equals_lifelines():
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(3)
    n = 60
    df = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n)})
    # Coarse times (many ties) with a real effect of x1.
    df["T"] = np.ceil(rng.exponential(scale=np.exp(-0.8 * df["x1"])) * 5)
    df["E"] = (rng.uniform(size=n) < 0.7).astype(int)
    cph = CoxPHFitter().fit(df, duration_col="T", event_col="E")
    beta = cph.params_[["x1", "x2"]].to_numpy()
    risk = torch.from_numpy(df[["x1", "x2"]].to_numpy() @ beta)
    loss = cox_partial_likelihood_loss(risk, torch.tensor(df["T"].to_numpy()), torch.tensor(df["E"].to_numpy()),
                                       ties="efron")
    n_events = df["E"].sum()
    assert -float(loss) * n_events == pytest.approx(cph.log_likelihood_, abs=1e-6)
    # lifelines centres covariates; the partial likelihood is invariant to that shift, which the
    # brute-force formula confirms independently.
    assert -float(loss) * n_events == pytest.approx(
        _brute_force_loglik(risk.numpy(), df["T"].to_numpy(), df["E"].to_numpy(), "efron"), abs=1e-9)


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_matches_brute_force_with_ties_and_large_risks(ties):
    rng = np.random.default_rng(0)
    n = 40
    t = rng.integers(1, 8, size=n).astype(float)  # heavy ties
    e = (rng.uniform(size=n) < 0.6).astype(float)
    r = rng.normal(size=n) * 3
    loss = cox_partial_likelihood_loss(torch.from_numpy(r), torch.from_numpy(t), torch.from_numpy(e), ties=ties)
    expected = -_brute_force_loglik(r, t, e, ties) / e.sum()
    assert float(loss) == pytest.approx(expected, rel=1e-10)
    # Shifting all risks by a constant leaves the partial likelihood unchanged, even by +1000
    # (exp would overflow without log-sum-exp).
    shifted = cox_partial_likelihood_loss(torch.from_numpy(r + 1000.0), torch.from_numpy(t), torch.from_numpy(e),
                                          ties=ties)
    assert torch.isfinite(shifted) and float(shifted) == pytest.approx(expected, rel=1e-9)
    # float32 stays close to float64.
    loss32 = cox_partial_likelihood_loss(torch.from_numpy(r).float(), torch.from_numpy(t).float(),
                                         torch.from_numpy(e).float(), ties=ties)
    assert float(loss32) == pytest.approx(expected, rel=1e-5)


def test_breslow_and_efron_agree_without_ties_and_differ_with_ties():
    rng = np.random.default_rng(1)
    r = torch.from_numpy(rng.normal(size=30))
    e = torch.from_numpy((rng.uniform(size=30) < 0.5).astype(float))
    t_distinct = torch.from_numpy(rng.permutation(30).astype(float) + 1)
    assert float(cox_partial_likelihood_loss(r, t_distinct, e, ties="breslow")) == pytest.approx(
        float(cox_partial_likelihood_loss(r, t_distinct, e, ties="efron")), rel=1e-12)
    t_tied = torch.ones(30)
    assert abs(float(cox_partial_likelihood_loss(r, t_tied, e, ties="breslow"))
               - float(cox_partial_likelihood_loss(r, t_tied, e, ties="efron"))) > 1e-3


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_masking_a_subject_equals_removing_it(ties):
    rng = np.random.default_rng(2)
    n = 25
    r = torch.from_numpy(rng.normal(size=n)).requires_grad_(True)
    t = torch.from_numpy(rng.integers(1, 10, size=n).astype(float))
    e = torch.from_numpy((rng.uniform(size=n) < 0.5).astype(float))
    e[[0, 1]] = 1.0
    mask = torch.ones(n, dtype=torch.bool)
    mask[[0, 5, 7]] = False
    # A masked subject's survival data may be unknown (NaN): it must not matter.
    t_nan, e_nan = t.clone(), e.clone()
    t_nan[5], e_nan[7] = float("nan"), float("nan")
    masked = cox_partial_likelihood_loss(r, t_nan, e_nan, mask=mask, ties=ties)
    removed = cox_partial_likelihood_loss(r[mask], t[mask], e[mask], ties=ties)
    assert masked.item() == pytest.approx(removed.item(), rel=1e-12)
    masked.backward()
    assert torch.all(r.grad[~mask] == 0) and torch.any(r.grad[mask] != 0)


def test_no_events_gives_a_zero_with_a_graph():
    r = torch.randn(6, requires_grad=True)
    loss = cox_partial_likelihood_loss(r, torch.arange(1.0, 7.0), torch.zeros(6))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(r.grad == 0)
    # Everything masked behaves the same.
    r.grad = None
    loss = cox_partial_likelihood_loss(r, torch.arange(1.0, 7.0), torch.ones(6), mask=torch.zeros(6))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(r.grad == 0)


def test_bad_input_is_a_clear_error():
    r = torch.zeros(3)
    with pytest.raises(ValueError, match="non-finite survival time"):
        cox_partial_likelihood_loss(r, torch.tensor([1.0, float("nan"), 2.0]), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="negative survival time"):
        cox_partial_likelihood_loss(r, torch.tensor([1.0, -2.0, 2.0]), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="0 or 1"):
        cox_partial_likelihood_loss(r, torch.tensor([1.0, 2.0, 2.0]), torch.tensor([1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="ties"):
        cox_partial_likelihood_loss(r, torch.ones(3), torch.ones(3), ties="exact")
    with pytest.raises(ValueError, match="same number"):
        cox_partial_likelihood_loss(r, torch.ones(4), torch.ones(3))


# ---------------------------------------------------------------------------- EventBatchSampler
def _events(n: int, n_events: int, seed: int = 0) -> np.ndarray:
    e = np.zeros(n)
    e[np.random.default_rng(seed).choice(n, n_events, replace=False)] = 1
    return e


@pytest.mark.parametrize("n,n_events,batch_size,min_events", [(50, 20, 8, 2), (37, 9, 5, 1), (64, 40, 16, 4),
                                                              (10, 10, 4, 2), (23, 8, 4, 1)])
def test_event_sampler_every_batch_has_events_and_every_subject_once(n, n_events, batch_size, min_events):
    from radfusion.data.samplers import EventBatchSampler

    events = _events(n, n_events)
    sampler = EventBatchSampler(events, batch_size, min_events=min_events, seed=7)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == int(np.ceil(n / batch_size))
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(n))  # each subject exactly once per epoch
        sizes = [len(b) for b in batches]
        assert max(sizes) <= batch_size and max(sizes) - min(sizes) <= 1  # no one-subject tail batch
        assert min(int(events[b].sum()) for b in batches) >= min_events


def test_event_sampler_is_deterministic_per_seed_and_epoch_and_shuffles_across_epochs():
    from radfusion.data.samplers import EventBatchSampler

    events = _events(40, 15)
    a = EventBatchSampler(events, 8, seed=1)
    b = EventBatchSampler(events, 8, seed=1)
    assert a.batches(3) == b.batches(3)
    assert a.batches(3) != a.batches(4)
    assert a.batches(3) != EventBatchSampler(events, 8, seed=2).batches(3)
    # Used bare (no set_epoch), successive iterations are successive epochs.
    assert list(a) == a.batches(0) and list(a) == a.batches(1)


def test_event_sampler_plain_shuffling_would_miss_events():
    """The reason for the sampler: plain batches of 8 with 20 % events often have no event."""
    from radfusion.data.samplers import EventBatchSampler

    events = _events(80, 16)
    rng = np.random.default_rng(0)
    empty_plain = sum(int(events[p].sum()) == 0 for _ in range(50) for p in np.array_split(rng.permutation(80), 10))
    assert empty_plain > 0
    sampler = EventBatchSampler(events, 8, min_events=1, seed=0)
    assert all(events[b].sum() >= 1 for e in range(50) for b in sampler.batches(e))


def test_event_sampler_drop_last_keeps_events_and_too_few_events_warns(caplog):
    from radfusion.data.samplers import EventBatchSampler

    events = _events(30, 6)
    sampler = EventBatchSampler(events, 8, min_events=1, seed=0, drop_last=True)
    batches = sampler.batches(0)
    assert len(batches) == 3 and all(len(b) == 8 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == 24 and events[flat].sum() == 6  # only censored subjects left out
    with caplog.at_level("WARNING"):
        sparse = EventBatchSampler(_events(30, 3), 5, min_events=2, seed=0)
    assert "3 events for 6 batches" in caplog.text
    counts = sorted(int(_events(30, 3)[b].sum()) for b in sparse.batches(0))
    assert counts == [0, 0, 0, 1, 1, 1]  # still spread evenly
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        EventBatchSampler(np.array([0, 1, 2]), 2)


def test_event_sampler_with_dataloader_and_cox_loss():
    from torch.utils.data import DataLoader, TensorDataset

    from radfusion.data.samplers import EventBatchSampler

    rng = np.random.default_rng(5)
    n = 45
    x = torch.from_numpy(rng.normal(size=(n, 3)))
    t = torch.from_numpy(rng.exponential(100, size=n))
    e = torch.from_numpy(_events(n, 12, seed=5))
    loader = DataLoader(TensorDataset(x, t, e), batch_sampler=EventBatchSampler(e.numpy(), 6, min_events=1, seed=0))
    beta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    for xb, tb, eb in loader:
        assert eb.sum() >= 1
        loss = cox_partial_likelihood_loss(xb @ beta, tb, eb)
        loss.backward()
        assert torch.isfinite(loss)
    assert beta.grad.abs().sum() > 0


def test_event_sampler_gives_new_batches_each_lightning_epoch():
    """Lightning does not call set_epoch on a batch sampler; each epoch must still be the next order."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from radfusion.data.samplers import EventBatchSampler

    events = _events(24, 8)
    sampler = EventBatchSampler(events, 6, min_events=1, seed=3)
    seen: list[list[int]] = []

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, _):
            seen.append(batch[0].tolist())
            return (self.w * batch[1].float()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    ds = TensorDataset(torch.arange(24), torch.from_numpy(events))
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(Tiny(), DataLoader(ds, batch_sampler=sampler))
    expected = [b for epoch in range(3) for b in EventBatchSampler(events, 6, min_events=1, seed=3).batches(epoch)]
    assert seen == expected
