"""The local Chaos Mesh: admission, selection, status lifecycle and fault push.

``install_chaos_admission(store)`` adds Chaos Mesh's webhook rules on top of the
CRD schema validation; ``ChaosController(store, xds, supervisor)`` runs the
NetworkChaos, PodChaos and HTTPChaos objects of the store against the local mesh
(docs/fidelity.md §5).
"""

from localmesh.chaos.admission import install_chaos_admission, validate_chaos
from localmesh.chaos.controller import ChaosController

__all__ = ["ChaosController", "install_chaos_admission", "validate_chaos"]
