"""Istio's fault-injection task in its own form, for the tests that admit, translate and run it
(tests/unit/test_virtual_service_faults.py, tests/integration/test_fault_injection_mesh.py).

``samples/bookinfo/networking/virtual-service-ratings-test-delay.yaml``: a route matched on
the header ``end-user: jason`` carrying the fault, then the catch-all route without it, both to
the ``v1`` subset of ``ratings``; the ``-abort.yaml`` sample is the same with an abort. Nothing
local in it (docs/fidelity.md §2.4).
"""

from __future__ import annotations

from typing import Any

from localmesh.yamldoc import safe_load

RATINGS_TEST_DELAY = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
  namespace: shop
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      delay:
        percentage:
          value: 100.0
        fixedDelay: 7s
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
"""


def ratings_test_vs(fault: dict[str, Any]) -> dict[str, Any]:
    """The task's VirtualService with ``fault`` on the header-matched route."""
    vs: dict[str, Any] = safe_load(RATINGS_TEST_DELAY)
    vs["spec"]["http"][0]["fault"] = fault
    return vs
