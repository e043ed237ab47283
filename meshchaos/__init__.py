"""meshchaos: chaos experiments for Istio meshes."""

__version__ = "0.1.0"
