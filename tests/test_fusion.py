"""Fusion variants, modality dropout, and frozen-encoder mode (embedding cache + a real train run)."""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from helpers.config import compose_train_cfg
from helpers.paths import CONFIG_DIR
from radfusion.models.encoders import ResNetEncoder
from radfusion.models.fusion import (
    ConcatFusion,
    CrossAttentionFusion,
    FusionNet,
    GatedFusion,
    fusion_config,
    mlp,
    modality_dropout_masks,
)
from radfusion.training.frozen import EmbeddingError, compute_embeddings, embedding_dir

#: The shipped fusion options (configs/model/fusion/<name>.yaml).
FUSIONS = ("concat", "gated", "attention")


def _encoder(**kw) -> ResNetEncoder:
    return ResNetEncoder(block_inplanes=(4, 8, 8, 16), **kw)


def _fusion_yaml(name: str) -> dict:
    """A shipped ``configs/model/fusion/`` block, as the ``fuser`` mapping FusionNet accepts."""
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / "fusion" / f"{name}.yaml"))


@pytest.mark.parametrize("kind", FUSIONS)
def test_each_fusion_uses_both_branches(kind):
    torch.manual_seed(0)
    net = FusionNet("hybrid", n_outputs=2, encoder=_encoder(), radiomics_dim=10, fuser=_fusion_yaml(kind)).eval()
    image, rad = torch.randn(3, 4, 16, 16, 16), torch.randn(3, 10)
    out = net(image=image, radiomics=rad)
    assert out.shape == (3, 2)
    assert not torch.allclose(out, net(image=image, radiomics=rad + 1), atol=1e-4)
    assert not torch.allclose(out, net(image=image + 1, radiomics=rad), atol=1e-4)
    # subjects do not leak into each other (no batch-level mixing in eval mode)
    assert torch.allclose(net(image=image[:1], radiomics=rad[:1]), out[:1], atol=1e-5)


def test_gated_unit_matches_its_formula():
    torch.manual_seed(0)
    g = GatedFusion(5, 3, 4)
    xi, xr = torch.randn(2, 5), torch.randn(2, 3)
    z = torch.sigmoid(torch.cat([xi, xr], 1) @ g.gate.weight.T + g.gate.bias)
    hi = torch.tanh(xi @ g.image.weight.T + g.image.bias)
    hr = torch.tanh(xr @ g.radiomics.weight.T + g.radiomics.bias)
    assert torch.allclose(g(xi, xr), z * hi + (1 - z) * hr, atol=1e-6)


def test_attention_weights_are_a_distribution_over_stage_tokens():
    enc = _encoder(stages=(2, 3, 4), combine="project", proj_dim=8)
    fuser = functools.partial(CrossAttentionFusion, n_radiomics_tokens=3, dim=16, heads=2)
    net = FusionNet("hybrid", encoder=enc, radiomics_dim=6, fuser=fuser).eval()
    net(image=torch.randn(2, 4, 16, 16, 16), radiomics=torch.randn(2, 6))
    w = net.fuser.last_attention
    assert w.shape == (2, 3, 3)  # (batch, radiomics tokens, image tokens = stages)
    assert torch.allclose(w.sum(-1), torch.ones(2, 3), atol=1e-5)


def test_modality_dropout_drops_one_branch_at_rate_p_never_both():
    g = torch.Generator().manual_seed(0)
    keep_i, keep_r = modality_dropout_masks(20000, 0.3, generator=g)
    assert not ((keep_i == 0) & (keep_r == 0)).any()
    dropped = ((keep_i == 0) | (keep_r == 0)).float().mean().item()
    assert abs(dropped - 0.3) < 0.015
    assert abs((keep_i == 0).float().mean().item() - 0.15) < 0.015

    torch.manual_seed(0)
    net = FusionNet("hybrid", encoder=_encoder(), radiomics_dim=10, modality_dropout=0.5, dropout=0.0)
    image, rad = torch.randn(64, 4, 8, 8, 8), torch.randn(64, 10)
    net.train()
    img, r = net.embed(image, rad)
    zero_i, zero_r = (img == 0).all(1), (r == 0).all(1)
    assert zero_i.any() and zero_r.any() and not (zero_i & zero_r).any()
    net.eval()  # never at evaluation time
    img, r = net.embed(image, rad)
    assert not (img == 0).all(1).any() and not (r == 0).all(1).any()
    with pytest.raises(ValueError, match="modality_dropout"):
        FusionNet("hybrid", encoder=_encoder(), radiomics_dim=10, modality_dropout=1.0)
    with pytest.raises(TypeError, match="fusion: expected a class"):
        FusionNet("hybrid", encoder=_encoder(), radiomics_dim=10, fuser="sum")


def test_frozen_fusion_from_cached_embedding_equals_from_image():
    torch.manual_seed(0)
    net = FusionNet("hybrid", encoder=_encoder(frozen=True), radiomics_dim=10, fuser=GatedFusion).eval()
    image, rad = torch.randn(2, 4, 16, 16, 16), torch.randn(2, 10)
    cached = net.encoder.pooled(image)
    assert torch.allclose(net(image=cached, radiomics=rad), net(image=image, radiomics=rad), atol=1e-6)


# --------------------------------------------------------------------------- fusions as configs
def _reference_parts(kind: str, encoder: ResNetEncoder, radiomics_dim: int, n_outputs: int) -> dict[str, nn.Module]:
    """The construction before fusions became YAMLs, restated module by module in its order (radiomics MLP,
    image projection for concat/gated, fuser, head) with the shipped defaults. Parameter initialisation
    draws from the global RNG in this order, so a seeded default run depends on it."""
    parts: dict[str, nn.Module] = {"radiomics_mlp": mlp(radiomics_dim, [128, 32], 0.3)}
    if kind == "attention":
        parts["fuser"] = CrossAttentionFusion(encoder.token_dims, 32, 32, 4, 4, dropout=0.1)
        width = 64
    else:
        parts["image_proj"] = mlp(encoder.num_features, [32], 0.3)
        width = 32 + 32
        if kind == "gated":
            parts["fuser"] = GatedFusion(32, 32, 32)
            width = 32
    parts["head"] = nn.Sequential(mlp(width, [], 0.3), nn.Linear(width, n_outputs))
    return parts


@pytest.mark.parametrize("kind", FUSIONS)
def test_fusion_yaml_builds_the_same_parameters_in_the_same_rng_order(kind):
    torch.manual_seed(0)
    ref_encoder = _encoder()
    ref = _reference_parts(kind, ref_encoder, 10, 2)
    ref_rng = torch.rand(4)  # where construction left the global RNG
    torch.manual_seed(0)
    net = FusionNet("hybrid", n_outputs=2, encoder=_encoder(), radiomics_dim=10, fuser=_fusion_yaml(kind))
    assert torch.equal(torch.rand(4), ref_rng)  # same number of draws
    expected = {f"encoder.{k}": v for k, v in ref_encoder.state_dict().items()}
    for name, module in ref.items():  # same names too, so older checkpoints still load
        expected.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    state = net.state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], expected[k]) for k in state)
    # and the same function of a fixed input
    for m in (net, ref_encoder, *ref.values()):
        m.eval()
    g = torch.Generator().manual_seed(1)
    image, rad = torch.randn(3, 4, 16, 16, 16, generator=g), torch.randn(3, 10, generator=g)
    img, r = ref_encoder(image), ref["radiomics_mlp"](rad)
    if kind != "attention":
        img = ref["image_proj"](img)
    fused = torch.cat([img, r], dim=1) if kind == "concat" else ref["fuser"](img, r)
    with torch.no_grad():
        assert torch.equal(net(image=image, radiomics=rad), ref["head"](fused))


@pytest.mark.parametrize("name", FUSIONS)
def test_checkpoint_hparams_describe_the_fuser_in_plain_containers(name):
    """train.py instantiates model.fusion.fuser into a partial; the checkpoint must hold plain data that
    torch.load(weights_only=True) accepts and that rebuilds the same network."""
    cfg = compose_train_cfg([f"model/fusion={name}", "model.encoder.block_inplanes=[4,8,8,16]"])
    torch.manual_seed(0)
    model = instantiate(cfg.model, radiomics_dim=10)
    shipped = _fusion_yaml(name)
    assert model.hparams["fusion"]["fuser"] == shipped
    buf = io.BytesIO()
    torch.save({"hyper_parameters": dict(model.hparams)}, buf)
    buf.seek(0)
    hparams = torch.load(buf, weights_only=True)["hyper_parameters"]
    torch.manual_seed(0)
    rebuilt = type(model)(**hparams, encoder=instantiate(cfg.model.encoder))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values(),
                                                  strict=True))


def test_fusion_config_round_trips_partials_and_refuses_positional_settings():
    spec = fusion_config(functools.partial(GatedFusion, dim=7))
    assert spec == {"_target_": "radfusion.models.fusion.GatedFusion", "_partial_": True, "dim": 7}
    assert fusion_config(ConcatFusion) == {"_target_": "radfusion.models.fusion.ConcatFusion", "_partial_": True}
    net = FusionNet("hybrid", encoder=_encoder(), radiomics_dim=10, fuser=spec)
    assert isinstance(net.fuser, GatedFusion) and net.fuser.out_features == 7
    with pytest.raises(ValueError, match="by keyword"):
        fusion_config(functools.partial(GatedFusion, 5, 3))
    # the single-branch modes always concatenate, whatever fusion the config names
    deep = FusionNet("deep", encoder=_encoder(), fuser=spec)
    assert isinstance(deep.fuser, ConcatFusion) and deep.fuser.out_features == 32


# --------------------------------------------------------------------------- embedding cache
def _rois(tmp_path: Path, n: int = 5, channels: int = 4, key: str = "roikey123") -> dict[str, Path]:
    rng = np.random.default_rng(0)
    folder = tmp_path / "rois" / key
    folder.mkdir(parents=True)
    paths = {}
    for i in range(n):
        p = folder / f"S{i:03d}-abcdef.npy"
        np.save(p, rng.normal(size=(channels, 16, 16, 16)).astype(np.float16))
        paths[f"S{i:03d}"] = p
    return paths


def test_embedding_cache_is_computed_once_and_keyed_by_weights(tmp_path, monkeypatch):
    torch.manual_seed(0)
    enc = _encoder(frozen=True)
    rois = _rois(tmp_path)
    emb = compute_embeddings(enc, rois, tmp_path / "cache", batch_size=2)
    # values: the encoder's pooled output of the ROI tensor (float16 on disk → float32)
    x = torch.from_numpy(np.load(rois["S003"]).astype(np.float32))[None]
    assert np.allclose(emb["S003"], enc.pooled(x).detach().numpy()[0], atol=1e-5)
    folder = embedding_dir(enc, tmp_path / "cache", "roikey123")
    assert sorted(p.name for p in folder.glob("*.npy")) == sorted(f"{p.stem}.npy" for p in rois.values())

    # second call: read from disk, the encoder is not run
    monkeypatch.setattr(ResNetEncoder, "pooled", lambda self, x: (_ for _ in ()).throw(AssertionError("ran")))
    again = compute_embeddings(enc, rois, tmp_path / "cache")
    assert all(np.array_equal(again[s], emb[s]) for s in rois)
    monkeypatch.undo()

    # other weights → another folder
    other = _encoder(frozen=True)
    assert embedding_dir(other, tmp_path / "cache", "roikey123") != folder


def test_embedding_failure_names_subject_and_keeps_finished_work(tmp_path):
    enc = _encoder(frozen=True)
    rois = _rois(tmp_path, n=4)
    rois["S002"].write_bytes(b"not a numpy file")
    with pytest.raises(EmbeddingError, match=r"subject S002: cannot read ROI tensor .*S002-abcdef.npy"):
        compute_embeddings(enc, rois, tmp_path / "cache", batch_size=2)
    done = list(embedding_dir(enc, tmp_path / "cache", "roikey123").glob("*.npy"))
    assert sorted(p.stem.split("-")[0] for p in done) == ["S000", "S001"]  # the first batch survived
    wrong = _rois(tmp_path / "seven", n=1, channels=7, key="roikey7ch")
    with pytest.raises(EmbeddingError, match="has 7 channels, the encoder expects 4"):
        compute_embeddings(enc, wrong, tmp_path / "cache")


@pytest.mark.slow
def test_train_frozen_hybrid_trains_only_the_head_from_cached_embeddings(cfg_factory):
    from radfusion.training.run import train

    cfg = cfg_factory("idh_hybrid", ["model.encoder.frozen=true", "model/fusion=attention",
                                     "model.fusion.modality_dropout=0.25", "model.encoder.combine=project",
                                     "model.encoder.proj_dim=8", "trainer.max_epochs=3"])
    torch.manual_seed(0)
    metrics, objects = train(cfg)
    dm, model = objects["datamodule"], objects["model"]
    enc = model.net.encoder
    # the datamodule served the cached embeddings, one per subject, as "image"
    assert dm.embeddings is not None and set(dm.embeddings) == set(dm.ids)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, enc.raw_features)
    folder = Path(cfg.paths.cache_dir) / "embeddings"
    assert len(list(folder.rglob("*.npy"))) >= len(dm.ids)
    # the frozen backbone is exactly its initialisation: rebuilt with the same seed, same weights
    pl.seed_everything(cfg.seed)
    fresh = instantiate(cfg.model.encoder)
    assert all(torch.equal(a, b) for a, b in zip(fresh.net.state_dict().values(), enc.net.state_dict().values(),
                                                  strict=True))
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert 0.0 <= saved["test/auc_idh"] <= 1.0 and np.isfinite(metrics["val/auc_best"])
