"""radfusion: deep, handcrafted and hybrid radiomics for neuro-oncology.

Importing the package registers the OmegaConf resolver ``radfusion.roi_channels`` the configs use
(``model.encoder.in_channels: ${radfusion.roi_channels:${data.roi},...}``), so the CNN's input width
follows the ROI channels (sequences, habitat masks, presence flags) instead of being set by hand.
"""

__version__ = "0.1.0"


def roi_channels(roi, image: str = "followup") -> int:
    """Channels of the ROI tensors a ``data.roi`` config block makes (:attr:`ROISettings.n_channels`),
    doubled for ``data.longitudinal.image=both`` (baseline and follow-up stacked)."""
    from omegaconf import DictConfig, OmegaConf

    from radfusion.imaging.roi import ROISettings

    cfg = OmegaConf.to_container(roi, resolve=True) if isinstance(roi, DictConfig) else dict(roi)
    cfg["sequences"] = tuple(cfg.get("sequences", ROISettings.sequences))
    cfg["habitats"] = tuple(cfg.get("habitats") or ())
    return ROISettings(**cfg).n_channels * (2 if image == "both" else 1)


def _register_resolvers() -> None:
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a core dependency
        return
    if not OmegaConf.has_resolver("radfusion.roi_channels"):
        OmegaConf.register_new_resolver("radfusion.roi_channels", roi_channels)


_register_resolvers()
