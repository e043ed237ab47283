"""The Envoy emulation, one process per pod (``python -m localmesh.sidecar``)."""

from localmesh.sidecar.config import SidecarConfig, parse_config
from localmesh.sidecar.proxy import Sidecar

__all__ = ["Sidecar", "SidecarConfig", "parse_config"]
