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


def experiment_list(folder: str) -> str:
    """One line per ``<folder>/*.yaml``: its name and its ``# description:`` comment (else its first
    comment after ``# @package``). The ``radfusion.experiments`` resolver of ``train.py --help``
    (``configs/hydra/help/train.yaml``): the list is read from the files, so it cannot go stale."""
    from pathlib import Path

    rows = []
    for path in sorted(Path(folder).glob("*.yaml")):
        comments = [line[1:].strip() for line in path.read_text().splitlines()
                    if line.startswith("#") and not line.startswith("# @package")]
        described = [c.split(":", 1)[1].strip() for c in comments if c.startswith("description:")]
        rows.append((path.stem, (described or comments or ["(no description)"])[0]))
    width = max((len(name) for name, _ in rows), default=0)
    # `$` would start a substitution in Hydra's help template (string.Template): doubled, it prints once.
    return "\n".join(f"  {name.ljust(width)}  {text}".replace("$", "$$") for name, text in rows)


def _register_resolvers() -> None:
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a core dependency
        return
    if not OmegaConf.has_resolver("radfusion.roi_channels"):
        OmegaConf.register_new_resolver("radfusion.roi_channels", roi_channels)
    if not OmegaConf.has_resolver("radfusion.experiments"):
        OmegaConf.register_new_resolver("radfusion.experiments", experiment_list)


_register_resolvers()
