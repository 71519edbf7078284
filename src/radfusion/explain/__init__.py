"""Explanations of a finished run (``explain=true``): SHAP of the radiomics input (networks and
baselines), integrated-gradients saliency on the ROI, fusion weights and branch contributions."""

from radfusion.explain.run import explain_baseline, explain_network, explain_settings

__all__ = ["explain_baseline", "explain_network", "explain_settings"]
