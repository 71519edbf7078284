"""``manifest.json`` (radfusion.provenance): what a run used, checked against independent hashes of the files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import open_dict

from helpers.config import compose_config, compose_train_cfg
from helpers.subjects import manifest_cohort
from radfusion.cache import file_sha1
from radfusion.provenance import (
    build_manifest,
    git_state,
    library_versions,
    read_manifest,
    write_manifest,
)


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    """A classical baseline through train() on a 17-subject manifest cohort with one unreadable subject."""
    from radfusion.training.run import train

    tmp = tmp_path_factory.mktemp("prov")
    manifest = manifest_cohort(tmp, 17, corrupt="P05")
    cfg = compose_train_cfg([
        "experiment=idh_baseline_lr", "data=manifest", f"data.cohort.path={manifest}", "data.cohort.skip_invalid=true",
        "data.cohort.sequences=[t1ce,flair]", "~features.params.featureClass",
        "+features.params.featureClass={shape: null, firstorder: null}", "features.habitats=[ET,WT]",
        "data.split.val_fraction=0.25", "data.split.test_fraction=0.25", "data.n_jobs=1", "data.progress=false",
        "logger=csv", f"paths.cache_dir={tmp / 'cache'}", f"paths.data_dir={tmp / 'd'}",
        f"paths.log_dir={tmp / 'runs'}", "n_bootstrap=20", "seed=7", "data.split.seed=3",
    ])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp / "run")
    _, objects = train(cfg)
    return tmp / "run", manifest, objects["datamodule"]


def test_train_manifest_records_inputs_splits_and_exclusions(baseline_run):
    run, manifest_csv, dm = baseline_run
    m = read_manifest(run)
    assert m is not None and m["kind"] == "train" and m["experiment"] == "idh_baseline_lr"
    assert m["created"].endswith("+00:00")
    # cohort: the manifest file's own hash, not synthetic
    assert m["cohort"]["source"] == "manifest" and m["cohort"]["path"] == str(manifest_csv)
    assert m["cohort"]["content_sha1"] == file_sha1(manifest_csv)
    assert m["cohort"]["synthetic"] is False and m["cohort"]["n_subjects"] == 16
    # every used subject's input files, hashed independently here
    assert sorted(m["inputs"]) == sorted(dm.ids) and "P05" not in m["inputs"]
    for sid, sums in m["inputs"].items():
        subject = dm.cohort.subject(sid)
        expected = {q: file_sha1(p) for q, p in subject.images.items()} | {"seg": file_sha1(subject.seg)}
        assert sums == expected, sid
    assert set(m["inputs"]["P00"]) == {"t1ce", "flair", "seg"}  # the cohort's two sequences and the mask
    # splits and exclusions
    assert m["splits_file"] == str(dm.splits_file) and m["splits_sha1"] == file_sha1(dm.splits_file)
    assert list(m["excluded"]) == ["P05"]
    assert m["excluded"]["P05"].startswith("validation: subject P05: ") and "P05_t1ce.nii.gz" in m["excluded"]["P05"]
    # settings and seeds the run used
    assert m["seeds"] == {"seed": 7, "split_seed": 3}
    assert m["feature_settings_hash"] == dm.feature_settings.cache_key()
    assert m["settings"]["features"]["habitats"] == ["ET", "WT"] and m["settings"]["roi"] is None
    assert m["settings"]["preprocessing"]["bin_width"] == 25 and m["settings"]["split"]["seed"] == 3


def test_manifest_versions_git_and_platform(baseline_run):
    m = read_manifest(baseline_run[0])
    from importlib.metadata import version

    for key, dist in (("torch", "torch"), ("pyradiomics", "pyradiomics"), ("sklearn", "scikit-learn"),
                      ("sksurv", "scikit-survival"), ("numpy", "numpy"), ("monai", "monai"),
                      ("pytorch_lightning", "pytorch-lightning")):
        assert m["versions"][key] == version(dist), key
    assert m["radfusion_version"] == version("radfusion")
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "--no-optional-locks", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    if head.returncode == 0:
        assert m["git"]["commit"] == head.stdout.strip() and isinstance(m["git"]["dirty"], bool)
    assert m["platform"]["cpu_count"] and m["platform"]["trainer"]["accelerator"] == "cpu"


def test_git_state_outside_a_repository_and_roundtrip(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None}
    versions = library_versions()
    assert "python" in versions and all(isinstance(v, str) for v in versions.values())
    m = build_manifest("predict", {"seed": 1, "cohort": {"source": "manifest", "path": str(tmp_path / "nope.csv")}},
                       extra={"bundle": Path("/x/model")})
    path = write_manifest(tmp_path, m)
    assert path == tmp_path / "manifest.json" and read_manifest(tmp_path)["extra"] == {"bundle": "/x/model"}
    assert read_manifest(tmp_path / "missing") is None
    with pytest.raises(ValueError, match="kind"):
        build_manifest("fit")


def test_synthetic_cohort_is_flagged(tiny_cohort):
    """The generator's folder is synthetic even when read as a plain manifest."""
    m = build_manifest("extract", {"cohort": {"source": "manifest", "path": str(tiny_cohort)}})
    assert m["cohort"]["synthetic"] is True and m["cohort"]["content_sha1"] == file_sha1(tiny_cohort)
    m = build_manifest("extract", {"cohort": {"source": "synthetic", "path": str(tiny_cohort.parent)}})
    assert m["cohort"]["synthetic"] is True and m["cohort"]["content_sha1"] == file_sha1(tiny_cohort)


def test_evaluate_writes_a_manifest_naming_its_runs(tmp_path):
    from radfusion.evaluation.run import evaluate
    from radfusion.synthetic.runs import cohort, write_run

    run = write_run(tmp_path / "r", cohort(30, seed=2), "idh_x", "handcrafted", 0, 1.5, markers=("idh",),
                    survival=False)
    evaluate(compose_config("eval.yaml", [f"runs=[{run}]", f"report_dir={tmp_path / 'rep'}", "name=t",
                                          "n_bootstrap=20", "html=false"]))
    m = json.loads((tmp_path / "rep" / "manifest.json").read_text())
    assert m["kind"] == "evaluate" and list(m["extra"]["runs"]) == [str(run)]
    assert m["extra"]["runs"][str(run)]["manifest"] is False  # a run folder without one says so


def test_extraction_manifest_and_ibsi_names(tmp_path):
    """extract_features' run folder: the manifest (inputs, exclusion, the table's hash) and ibsi_names.csv."""
    from radfusion.radiomics.run import run_extraction

    manifest = manifest_cohort(tmp_path, 3, corrupt="P02")
    cfg = compose_config("extract.yaml", [
        "cohort=manifest", f"cohort.path={manifest}", f"paths.cache_dir={tmp_path / 'cache'}",
        "cohort.sequences=[t1ce,flair]", "features.n_jobs=1", "progress=false", "features.habitats=[WT]",
        "~features.params.featureClass", "+features.params.featureClass={shape: null, firstorder: null}",
        "cohort.skip_invalid=true", "allow_failures=true"])
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "out")
    out = run_extraction(cfg)
    m = read_manifest(out)
    assert m["kind"] == "extract" and sorted(m["inputs"]) == ["P00", "P01"] and list(m["excluded"]) == ["P02"]
    assert m["inputs"]["P01"]["flair"] == file_sha1(tmp_path / "data" / "P01" / "P01_flair.nii.gz")
    assert m["extra"]["features_parquet_sha1"] == file_sha1(out / "features.parquet")
    assert m["settings"]["features"]["habitats"] == ["WT"] and m["feature_settings_hash"]
    names = pd.read_csv(out / "ibsi_names.csv")
    assert "WT_shape_MeshVolume" in set(names.column) and "WT_flair_original_firstorder_Mean" in set(names.column)
    assert names.set_index("column").loc["WT_flair_original_firstorder_Mean", "ibsi_code"] == "Q4LE"
    # a later feature-table run on that table knows where it came from; a synthetic origin is inherited
    table_cfg = {"data": {"cohort": {"source": "feature_table", "features": str(out / "features.parquet")}}}
    t = build_manifest("train", table_cfg)["cohort"]
    assert t["content_sha1"] == m["extra"]["features_parquet_sha1"] and t["synthetic"] is False
    assert t["derived_from"]["cohort"]["path"] == str(manifest) and t["derived_from"]["feature_settings_hash"]
    write_manifest(out, {**m, "cohort": {**m["cohort"], "synthetic": True}})
    assert build_manifest("train", table_cfg)["cohort"]["synthetic"] is True
    (out / "features.parquet").write_bytes(b"changed")  # an edited table no longer matches its extraction
    assert "derived_from" not in build_manifest("train", table_cfg)["cohort"]
