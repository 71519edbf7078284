"""Clinical covariates: the in-fold transform (against scikit-learn), its plain-data state, the refusals,
the training-only fit (poisoned val/test values), the clinical branch of FusionNet and a clinical run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from radfusion.baselines import run_baseline
from radfusion.features.clinical import ClinicalError, ClinicalTransformer, check_not_targets
from radfusion.models.encoders import ResNetEncoder
from radfusion.models.fusion import FusionNet


def _table(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "age": rng.normal(55, 12, n).round(1),
        "sex": rng.choice(["M", "F"], n),
        "kps": rng.choice([60.0, 70.0, 80.0, 90.0, 100.0], n),
        "resection": rng.choice([1.0, 2.0, 3.0], n),
        "mgmt": rng.choice([0.0, 1.0], n),
    }, index=pd.Index([f"S{i:03d}" for i in range(n)], name="subject_id"))
    frame.loc[frame.index[::7], "age"] = np.nan
    frame.loc[frame.index[3::11], "sex"] = None
    frame.loc[frame.index[5::9], "resection"] = np.nan
    return frame


def test_transform_matches_scikit_learn_imputer_scaler_and_one_hot():
    frame = _table()
    train, test = frame.iloc[:40], frame.iloc[40:].copy()
    test.iloc[0, test.columns.get_loc("sex")] = "X"  # a level unseen in training -> unknown
    ct = ClinicalTransformer(["age", "sex", "resection"], categorical=["resection"]).fit(train)
    assert ct.feature_names_out_ == ["age", "age_missing", "sex=F", "sex=M", "sex=unknown",
                                     "resection=1", "resection=2", "resection=3", "resection=unknown"]
    out = ct.transform(test)
    assert out.dtype == np.float64 and out.shape == (20, 9)
    # numeric: median imputation, indicator, z-score by the observed training values (StandardScaler skips NaN)
    imputer = SimpleImputer(strategy="median", add_indicator=True).fit(train[["age"]].to_numpy())
    scaler = StandardScaler().fit(train[["age"]].to_numpy())
    ref = imputer.transform(test[["age"]].to_numpy())
    np.testing.assert_allclose(out[:, 0], scaler.transform(ref[:, :1]).ravel())
    np.testing.assert_array_equal(out[:, 1], ref[:, 1])
    # categorical: one-hot of the training levels; missing and unseen levels go to the unknown column
    for col, cols, levels in (("sex", slice(2, 5), ["F", "M"]), ("resection", slice(5, 9), [1.0, 2.0, 3.0])):
        enc = OneHotEncoder(categories=[levels], handle_unknown="ignore", sparse_output=False)
        values = test[[col]].astype(object).where(test[[col]].notna(), "missing").to_numpy()
        onehot = enc.fit(np.array([levels], dtype=object).T).transform(values)
        np.testing.assert_array_equal(out[:, cols][:, :-1], onehot)
        np.testing.assert_array_equal(out[:, cols][:, -1], onehot.sum(axis=1) == 0)
    assert out[0, 4] == 1.0  # the unseen "X"


def test_state_is_json_and_from_state_transforms_identically():
    frame = _table()
    ct = ClinicalTransformer(["age", "sex", "kps", "resection", "mgmt"], categorical=["resection"]).fit(frame.iloc[:40])
    state = json.loads(json.dumps(ct.to_state()))  # plain data only: json would refuse anything else
    again = ClinicalTransformer.from_state(state)
    np.testing.assert_array_equal(again.transform(frame), ct.transform(frame))
    assert again.feature_names_out_ == ct.feature_names_out_
    state["levels"]["sex"] = ["F"]
    with pytest.raises(ClinicalError, match="inconsistent"):
        ClinicalTransformer.from_state(state)


def test_bad_columns_are_clear_errors():
    frame = _table()
    with pytest.raises(ClinicalError, match=r"\['resectoin'\].*available columns: \['age', 'sex', 'kps'"):
        ClinicalTransformer(["age", "resectoin"]).fit(frame)
    empty = frame.assign(kps=np.nan)
    with pytest.raises(ClinicalError, match="'kps' has no value in the training split"):
        ClinicalTransformer(["kps"]).fit(empty)
    with pytest.raises(ClinicalError, match="'mgmt'.*also prediction targets"):
        check_not_targets(["age", "mgmt"], ["mgmt"], survival=False)
    with pytest.raises(ClinicalError, match="'os_days'"):
        check_not_targets(["os_days"], [], survival=True)
    check_not_targets(["age", "mgmt"], ["idh"], survival=True)  # a marker that is not predicted is fine


def test_a_target_as_covariate_is_refused_by_the_datamodule(cfg_factory):
    cfg = cfg_factory("mgmt_handcrafted", ["model.clinical=[age,mgmt]"])
    with pytest.raises(Exception, match="'mgmt'.*also prediction targets") as err:  # Hydra wraps it
        instantiate(cfg.data, use_images=False, use_radiomics=False)
    assert isinstance(err.value, ClinicalError) or isinstance(err.value.__cause__, ClinicalError)


def test_clinical_transform_is_fitted_on_training_subjects_only(cfg_factory):
    cfg = cfg_factory("idh_clinical")
    dm = instantiate(cfg.data, use_images=False, use_radiomics=False)
    dm.setup()
    assert dm.clinical_columns == ["age", "sex"] and dm.clinical_dim == 5
    train = dm.splits["train"]
    ages = dm.cohort.clinical.loc[train, "age"].astype(float)
    assert dm.clinical_pipeline.median_["age"] == pytest.approx(ages.median())
    assert dm.clinical_pipeline.mean_["age"] == pytest.approx(ages.mean())
    batch = next(iter(dm.val_dataloader()))
    assert batch["clinical"].dtype == torch.float32 and batch["clinical"].shape[1] == 5

    # Poison every validation / test subject's clinical values: nothing fitted may change.
    dm2 = instantiate(cfg.data, use_images=False, use_radiomics=False)
    dm2.prepare_data()
    held_out = dm.splits["val"] + dm.splits["test"]
    dm2.prepared.cohort.clinical.loc[held_out, "age"] = 1e6
    dm2.prepared.cohort.clinical.loc[held_out, "sex"] = "poison"
    dm2.setup()
    assert dm2.splits == dm.splits
    fitted, poisoned = dm.clinical_pipeline.to_state(), dm2.clinical_pipeline.to_state()
    assert poisoned == fitted  # medians, means, sds, levels
    np.testing.assert_array_equal(dm2.clinical_inputs["train"], dm.clinical_inputs["train"])
    assert not np.allclose(dm2.clinical_inputs["test"], dm.clinical_inputs["test"])  # the poison was real


def _encoder() -> ResNetEncoder:
    return ResNetEncoder(block_inplanes=(4, 8, 8, 16))


@pytest.mark.parametrize("mode", ["handcrafted", "deep", "hybrid"])
def test_clinical_branch_joins_every_mode_and_leaves_the_rest_unchanged(mode):
    torch.manual_seed(0)
    plain = FusionNet(mode, n_outputs=2, encoder=_encoder(), radiomics_dim=10).eval()
    torch.manual_seed(0)
    net = FusionNet(mode, n_outputs=2, encoder=_encoder(), radiomics_dim=10, clinical_dim=5).eval()
    extra = {k for k in net.state_dict() if k not in plain.state_dict()}
    assert extra and all(k.startswith(("clinical_mlp.", "head.")) for k in extra)
    for k, v in plain.state_dict().items():  # same init of every non-clinical part (built before it)
        if not k.startswith("head."):
            torch.testing.assert_close(net.state_dict()[k], v)
    image, rad, clin = torch.randn(3, 4, 16, 16, 16), torch.randn(3, 10), torch.randn(3, 5)
    out = net(image=image, radiomics=rad, clinical=clin)
    assert out.shape == (3, 2)
    assert not torch.allclose(out, net(image=image, radiomics=rad, clinical=clin + 1), atol=1e-4)
    with pytest.raises(ValueError, match="no 'clinical'"):
        net(image=image, radiomics=rad)


def test_clinical_only_mode():
    net = FusionNet("clinical", n_outputs=1, clinical_dim=4).eval()
    assert not hasattr(net, "encoder") and not hasattr(net, "radiomics_mlp")
    assert net(clinical=torch.randn(2, 4)).shape == (2, 1)
    with pytest.raises(ValueError, match="model.clinical"):
        FusionNet("clinical")


def test_clinical_run_writes_predictions_and_a_safe_checkpoint(cfg_factory):
    from radfusion.training.run import train

    cfg = cfg_factory("survival_clinical", ["data.split.val_fraction=0.3", "data.split.test_fraction=0.3"])
    metrics, objs = train(cfg)
    assert metrics["mode"] == "clinical" and metrics["clinical"] == ["age", "sex"]
    assert np.isfinite(metrics["test/cindex"])
    ckpt = torch.load(objs["trainer"].checkpoint_callback.best_model_path, weights_only=True, map_location="cpu")
    assert ckpt["hyper_parameters"]["clinical"] == ["age", "sex"] and ckpt["hyper_parameters"]["clinical_dim"] == 5


def test_baselines_append_the_clinical_columns():
    rng = np.random.default_rng(0)
    sizes = {"train": 80, "val": 30, "test": 30}
    ids = [f"S{i:03d}" for i in range(sum(sizes.values()))]
    X, C = rng.normal(size=(len(ids), 4)), rng.normal(size=(len(ids), 3))
    idh = (C[:, 0] + 0.5 * rng.normal(size=len(ids)) > 0).astype(float)
    bounds = np.cumsum([0, *sizes.values()])
    splits = {s: ids[bounds[k]:bounds[k + 1]] for k, s in enumerate(sizes)}
    part = {s: slice(bounds[k], bounds[k + 1]) for k, s in enumerate(sizes)}
    dm = SimpleNamespace(ids=ids, targets=["idh"], labels=idh[:, None], splits=splits, fold=0,
                         radiomics={s: X[part[s]] for s in sizes}, clinical_inputs={s: C[part[s]] for s in sizes})
    cfg = {"baseline": "lr", "estimator": {"_target_": "sklearn.linear_model.LogisticRegression", "C": 1.0}}
    table = run_baseline(cfg, dm)
    assert table.attrs["baseline"]["n_features"] == 7
    direct = LogisticRegression(C=1.0).fit(np.hstack([X, C])[part["train"]], idh[part["train"]])
    test = table[table.split == "test"]
    np.testing.assert_allclose(test["prob_idh"], direct.predict_proba(np.hstack([X, C])[part["test"]])[:, 1])
