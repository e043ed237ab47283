"""The call tree of the reference chain (fixtures/chain), for tests that judge its evidence.

The probes no longer assume it: they read the tree from the sidecars' evidence
(``CallTree.observe``); tests of single rules still want it spelled out.
"""

from __future__ import annotations

from probes.evidence.request import CallTree

# fixtures/k8s: frontend -> orders -> inventory -> pricing, plus orders -> ratings.
REFERENCE_CHAIN = CallTree("frontend", {"frontend": ("orders",),
                                        "orders": ("inventory", "ratings"),
                                        "inventory": ("pricing",)})
