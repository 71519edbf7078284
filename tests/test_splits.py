"""Validation protocols: repeated stratified k-fold, nested CV, site-held-out, all at patient level."""

from __future__ import annotations

import json

import numpy as np
import pytest

from radfusion.data.splits import (
    fold_table,
    load_or_make_fold,
    load_or_make_folds,
    make_folds,
    make_splits,
    select_fold,
)


def _cohort(n_patients: int = 45, seed: int = 0):
    """Longitudinal cohort: patients with 1-3 timepoints, 4 sites, a binary label with unknowns."""
    rng = np.random.default_rng(seed)
    ids, groups, labels, sites = [], [], [], []
    for p in range(n_patients):
        label = np.nan if p % 15 == 0 else float(rng.random() < 0.4)
        site = "ABCD"[p % 4]
        for t in range(1 + p % 3):
            ids.append(f"P{p:03d}_t{t}")
            groups.append(f"P{p:03d}")
            labels.append(label)
            sites.append(site)
    return ids, np.array(labels), groups, sites


def _check_partition(fold: dict, ids: list[str]) -> None:
    parts = [set(fold[k]) for k in ("train", "val", "test")]
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2]) and parts[1].isdisjoint(parts[2])
    assert set().union(*parts) == set(ids)


def _check_groups_intact(fold: dict, groups: dict[str, str]) -> None:
    where = {}
    for part in ("train", "val", "test"):
        for sid in fold[part]:
            assert where.setdefault(groups[sid], part) == part, f"patient {groups[sid]} straddles splits"


def test_repeated_stratified_kfold_covers_each_patient_once_per_repeat():
    ids, labels, groups, sites = _cohort()
    group_of = dict(zip(ids, groups, strict=True))
    plan = make_folds(ids, labels, groups, sites, strategy="kfold", n_folds=5, n_repeats=3, val_fraction=0.25,
                      seed=3)
    assert plan["n_folds"] == 5 and plan["n_repeats"] == 3 and len(plan["folds"]) == 15
    label_of = dict(zip(ids, labels, strict=True))
    n_pos = sum(1 for g in set(groups) if label_of[f"{g}_t0"] == 1)
    tests_by_repeat = []
    for r in range(3):
        seen = []
        for k in range(5):
            fold = select_fold(plan, k, r)
            _check_partition(fold, ids)
            _check_groups_intact(fold, group_of)
            seen += fold["test"]
            # stratified: positives per test fold within one of an even share
            pos = {group_of[s] for s in fold["test"] if label_of[s] == 1}
            assert abs(len(pos) - n_pos / 5) <= 1.0
            # val carved from the development part: ~25 % of the non-test patients
            dev = {group_of[s] for s in fold["train"] + fold["val"]}
            val = {group_of[s] for s in fold["val"]}
            assert abs(len(val) / len(dev) - 0.25) < 0.08
        assert sorted(seen) == sorted(ids)  # every timepoint in exactly one test fold per repeat
        tests_by_repeat.append([tuple(select_fold(plan, k, r)["test"]) for k in range(5)])
    assert tests_by_repeat[0] != tests_by_repeat[1] != tests_by_repeat[2]  # repeats reshuffle
    again = make_folds(ids, labels, groups, sites, strategy="kfold", n_folds=5, n_repeats=3, val_fraction=0.25,
                       seed=3)
    assert again == plan  # seeded


def test_nested_inner_folds_stay_inside_the_outer_development_part():
    ids, labels, groups, _ = _cohort()
    group_of = dict(zip(ids, groups, strict=True))
    plan = make_folds(ids, labels, groups, strategy="kfold", n_folds=4, n_inner=3, seed=1)
    for f in plan["folds"]:
        dev = set(f["train"]) | set(f["val"])
        assert len(f["inner"]) == 3
        inner_vals = []
        for inner in f["inner"]:
            assert set(inner["train"]) | set(inner["val"]) == dev
            assert set(inner["train"]).isdisjoint(inner["val"])
            assert not (set(inner["train"]) | set(inner["val"])) & set(f["test"])
            _check_groups_intact({"train": inner["train"], "val": inner["val"], "test": []}, group_of)
            inner_vals += inner["val"]
        assert sorted(inner_vals) == sorted(dev)  # inner folds partition the development part
    inner = select_fold(plan, fold=2, inner_fold=1)
    assert inner["test"] == [] and inner["val"] == plan["folds"][2]["inner"][1]["val"]
    with pytest.raises(ValueError, match="inner fold 3 out of range"):
        select_fold(plan, fold=0, inner_fold=3)


def test_leave_one_site_out_and_named_site():
    ids, labels, groups, sites = _cohort()
    site_of = dict(zip(ids, sites, strict=True))
    group_of = dict(zip(ids, groups, strict=True))
    plan = make_folds(ids, labels, groups, sites, strategy="site", val_fraction=0.2, n_inner=2)
    assert plan["n_folds"] == 4
    for k, site in enumerate("ABCD"):
        fold = select_fold(plan, k)
        assert plan["folds"][k]["test_sites"] == [site]
        _check_partition(fold, ids)
        _check_groups_intact(fold, group_of)
        assert {site_of[s] for s in fold["test"]} == {site}
        assert site not in {site_of[s] for s in fold["train"] + fold["val"]}
        # the validation part holds subjects of every training site (stratified by label x site)
        assert {site_of[s] for s in fold["val"]} == set("ABCD") - {site}
    named = make_folds(ids, labels, groups, sites, strategy="site", test_sites=["B", "D"])
    assert named["n_folds"] == 1
    assert {site_of[s] for s in named["folds"][0]["test"]} == {"B", "D"}
    with pytest.raises(ValueError, match=r"test site\(s\) \['E'\] not in the cohort; sites are \['A', 'B'"):
        make_folds(ids, labels, groups, sites, strategy="site", test_sites=["E"])


def test_site_split_errors_name_the_subject_or_patient():
    ids, labels, groups, sites = _cohort(12)
    bad_sites = list(sites)
    bad_sites[3] = None
    with pytest.raises(ValueError, match=f"subject {ids[3]}: no site"):
        make_folds(ids, labels, groups, bad_sites, strategy="site")
    moved = list(sites)
    second = ids.index("P002_t1")
    moved[second] = "B" if sites[second] != "B" else "C"
    with pytest.raises(ValueError, match="group P002 .* several sites"):
        make_folds(ids, labels, groups, moved, strategy="site")
    with pytest.raises(ValueError, match="needs the subjects' sites"):
        make_folds(ids, labels, groups, None, strategy="site")


def test_holdout_without_groups_equals_the_original_split_and_groups_are_respected():
    ids = [f"s{i:02d}" for i in range(40)]
    labels = np.array([1.0] * 16 + [0.0] * 20 + [np.nan] * 4)
    plan = make_folds(ids, labels, strategy="holdout", val_fraction=0.25, test_fraction=0.25, seed=1)
    assert select_fold(plan) == make_splits(ids, labels, 0.25, 0.25, seed=1)
    ids, labels, groups, _ = _cohort()
    plan = make_folds(ids, labels, groups, strategy="holdout", n_repeats=2)
    for r in range(2):
        fold = select_fold(plan, 0, r)
        _check_partition(fold, ids)
        _check_groups_intact(fold, dict(zip(ids, groups, strict=True)))
    assert select_fold(plan, 0, 0) != select_fold(plan, 0, 1)


def test_splits_file_records_every_fold_and_is_reused(tmp_path):
    ids, labels, groups, sites = _cohort()
    kw = {"groups": groups, "sites": sites, "strategy": "kfold", "n_folds": 5, "n_repeats": 2, "seed": 0}
    fold, path = load_or_make_fold(tmp_path, ids, labels, fold=3, repeat=1, **kw)
    stored = json.loads(path.read_text())
    assert len(stored["folds"]) == 10 and stored["strategy"] == "kfold"
    assert {k: stored["folds"][8][k] for k in ("train", "val", "test")} == fold
    # other labels (another target, another mode) reuse the same file and folds
    again, path2 = load_or_make_fold(tmp_path, ids, labels[::-1], fold=3, repeat=1, **kw)
    assert path2 == path and again == fold
    # another protocol gets another file
    _, other = load_or_make_folds(tmp_path, ids, labels, sites=sites, groups=groups, strategy="site")
    assert other != path and len(list(tmp_path.glob("folds_*.json"))) == 2
    with pytest.raises(ValueError, match=r"fold 5, repeat 0 out of range: the kfold plan has 5 fold\(s\) x 2"):
        load_or_make_fold(tmp_path, ids, labels, fold=5, **kw)


def test_fold_table_lists_each_subject_once_per_fold():
    ids, labels, groups, sites = _cohort(20)
    plan = make_folds(ids, labels, groups, sites, strategy="kfold", n_folds=4, n_repeats=2)
    table = fold_table(plan)
    assert len(table) == len(ids) * 8
    assert (table.groupby(["repeat", "fold"]).subject_id.nunique() == len(ids)).all()
    assert set(table.split) == {"train", "val", "test"}


@pytest.mark.parametrize("kw, message", [
    ({"strategy": "loso"}, "unknown split strategy"),
    ({"n_folds": 1}, "cannot make 1 folds"),
    ({"n_inner": 1}, "n_inner must be 0"),
    ({"test_sites": ["A"]}, "needs strategy='site'"),
])
def test_bad_protocol_settings_are_rejected(kw, message):
    ids, labels, groups, sites = _cohort(20)
    with pytest.raises(ValueError, match=message):
        make_folds(ids, labels, groups, sites, **kw)
