"""Explanations (radfusion.explain) against closed forms: linear SHAP, IG completeness, branch contributions
of constant inputs, fusion weights, and the grouping of radiomics column names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from radfusion.explain.branches import branch_contributions, fusion_weights, model_inputs
from radfusion.explain.groups import parse_feature_name
from radfusion.explain.saliency import integrated_gradients, mask_share, save_nifti
from radfusion.explain.shap_values import ShapResult, explain_estimator, explain_function, importance_tables
from radfusion.models.fusion import FusionNet, GatedFusion


def test_linear_shap_is_coef_times_deviation_from_the_background_mean():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 6))
    y = (X[:, 0] - X[:, 2] + 0.3 * rng.normal(size=80) > 0).astype(int)
    model = LogisticRegression(C=1.0).fit(X[:60], y[:60])
    bg, X_new = X[:60], X[60:]
    res = explain_estimator(model, bg, X_new, [f"f{i}" for i in range(6)], [f"S{i}" for i in range(20)])
    assert res.explainer == "linear"
    closed = model.coef_[0] * (X_new - bg.mean(axis=0))  # independent reference: the closed form
    np.testing.assert_allclose(res.values, closed, atol=1e-10)
    np.testing.assert_allclose(res.base_values + res.values.sum(axis=1), model.decision_function(X_new), atol=1e-8)
    # The model-agnostic explainer on the same linear function gives the same values (exact for linear f).
    w, b = model.coef_[0], model.intercept_[0]
    perm = explain_function(lambda Z: Z @ w + b, bg, X_new[:5], [f"f{i}" for i in range(6)], list("abcde"))
    np.testing.assert_allclose(perm.values, closed[:5], atol=1e-8)


def test_column_names_are_grouped_by_habitat_sequence_and_class():
    assert parse_feature_name("ED_flair_wavelet-LLH_glszm_ZoneEntropy") == {
        "habitat": "ED", "sequence": "flair", "image_type": "wavelet-LLH", "feature_class": "glszm",
        "coarse": "texture", "feature": "ZoneEntropy"}
    assert parse_feature_name("WT_shape_MeshVolume")["coarse"] == "shape"
    assert parse_feature_name("NCR_voxels")["habitat"] == "NCR"
    assert parse_feature_name("missing:ET_t1ce_original_firstorder_Mean")["coarse"] == "flag"
    assert parse_feature_name("flair_missing")["sequence"] == "flair"
    assert parse_feature_name("age")["coarse"] == "other"
    names = ["ED_flair_original_glcm_Idm", "ED_flair_original_glrlm_RunEntropy", "ET_t1ce_original_firstorder_Mean"]
    values = np.array([[1.0, -2.0, 0.5], [-3.0, 0.0, 0.5]])
    features, groups = importance_tables(ShapResult(values, np.zeros(2), values, names, ["a", "b"], "linear"))
    assert features["name"].tolist()[0] == "ED_flair_original_glcm_Idm" and features["rank"].tolist() == [1, 2, 3]
    g = groups.set_index(["level", "name"])
    assert g.loc[("group", "ED × FLAIR texture"), "mean_abs_shap"] == pytest.approx(2.0 + 1.0)
    assert g.loc[("group", "ET × T1CE intensity"), "n_features"] == 1
    assert g.loc[("habitat", "ED"), "mean_abs_shap"] == pytest.approx(3.0)


class _SmoothNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3, padding=1)
        self.out = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.conv(x)).mean(dim=(2, 3, 4)))[:, 0]


def test_integrated_gradients_completeness_and_mask_share(tmp_path):
    torch.manual_seed(0)
    net = _SmoothNet()
    roi = torch.randn(2, 8, 8, 8)
    attr, delta, gap = integrated_gradients(net, roi, n_steps=64)
    assert attr.shape == (2, 8, 8, 8)
    with torch.no_grad():  # f(x) - f(0), computed here, independently of captum
        ref_gap = float(net(roi[None])[0] - net(torch.zeros(1, 2, 8, 8, 8))[0])
    assert gap == pytest.approx(ref_gap)
    assert attr.sum() == pytest.approx(ref_gap, abs=1e-3 * max(1.0, abs(ref_gap)))
    assert abs(delta) < 1e-3
    # An output made only of tumour voxels puts all positive attribution inside the mask.
    mask = np.zeros((8, 8, 8), bool)
    mask[2:5, 2:6, 3:7] = True
    m = torch.from_numpy(mask).float()
    attr2, _, _ = integrated_gradients(lambda x: (x.clamp_min(0) ** 2 * m).sum(dim=(1, 2, 3, 4)), roi.abs())
    inside, fraction = mask_share(attr2, mask)
    assert inside == pytest.approx(1.0) and fraction == pytest.approx(mask.mean())
    nib = pytest.importorskip("nibabel")
    save_nifti(tmp_path / "a.nii.gz", attr2)
    back = np.asarray(nib.load(tmp_path / "a.nii.gz").dataobj)
    np.testing.assert_allclose(back.transpose(3, 2, 1, 0), attr2)  # (x, y, z, channel) on disk


class _Encoder(nn.Module):
    num_features = 5

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1)[:, :8])


def _hybrid() -> FusionNet:
    torch.manual_seed(1)
    return FusionNet("hybrid", n_outputs=2, encoder=_Encoder(), radiomics_dim=4, radiomics_hidden=[6],
                     image_hidden=5, dropout=0.0, fuser=GatedFusion).eval()


def test_branch_contribution_is_zero_for_a_constant_branch_and_gates_are_per_subject():
    net = _hybrid()
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.normal(size=(6, 1, 2, 2, 2))).float()
    varying = torch.from_numpy(rng.normal(size=(6, 4))).float()
    constant = torch.ones(6, 4) * 0.7
    with torch.no_grad():
        emb = net.encoder(images)
    for radiomics, zero in ((constant, True), (varying, False)):
        inputs = model_inputs({"radiomics": radiomics, "subject_id": ["x"] * 6})
        means = {"radiomics": radiomics.mean(0, keepdim=True), "image": emb.mean(0, keepdim=True)}
        contrib = branch_contributions(net, inputs, emb, means)
        assert contrib["radiomics"].shape == (6, 2)
        assert np.allclose(contrib["radiomics"], 0.0, atol=1e-6) == zero
        assert np.abs(contrib["image"]).max() > 1e-4  # images differ: the image branch moves the logit
    const_emb = emb[:1].expand(6, -1)  # every subject has the same image embedding
    contrib = branch_contributions(net, model_inputs({"radiomics": varying}), const_emb,
                                   {"radiomics": varying.mean(0, keepdim=True), "image": emb[:1]})
    np.testing.assert_allclose(contrib["image"], 0.0, atol=1e-6)
    # Gate values of the last forward pass, per subject, equal a direct computation of the unit's gate.
    with torch.no_grad():
        net(image=images, radiomics=varying)
        img, rad = net.embed(images, varying)
        z = torch.sigmoid(net.fuser.gate(torch.cat([img, rad], dim=1))).numpy()
    weights = fusion_weights(net.fuser)
    np.testing.assert_allclose(np.column_stack([weights[f"gate_{k}"] for k in range(z.shape[1])]), z, rtol=1e-6)
    np.testing.assert_allclose(weights["gate_image_mean"], z.mean(axis=1), rtol=1e-6)
    assert pd.Series(weights["gate_image_mean"]).between(0, 1).all()
