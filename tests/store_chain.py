"""What points each shipped experiment at the store chain (fixtures/store/k8s) by ``--var``
alone, as the README's "A chain of your own" does: the tests that run the experiments there
and the preflight tests that check them against its manifests read the same table.
"""

from __future__ import annotations

# What every experiment is given for the store chain...
STORE = {"namespace": "store", "entry_path": "/api/items/42",
         "meshchaos_manifests": "fixtures/store/k8s"}
# ...and what each one acts on there (the README's table).
STORE_VARS: dict[str, dict[str, str]] = {
    "timeout-cascade": {"target_service": "warehouse", "target_caller": "stock"},
    "pod-kill-midchain": {"target_service": "stock"},
    "partition-leaf": {"target_service": "stock", "partition_peer": "warehouse"},
    "lossy-retry-budget": {"target_service": "catalog"},
    "sidecar-failure": {"side_service": "reviews"},
    "deadline-headers-audit": {},
    "fault-delay-beyond-timeout": {"target_service": "warehouse", "target_caller": "stock"},
    "fault-abort-side-hop": {"side_service": "reviews"},
}
