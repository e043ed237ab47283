"""What every local mesh a test writes for itself starts with (tests/integration/conftest.py's
echo mesh, the AMQP client's mesh in tests/data/amqp_client.py, the fault-injection scenario):
the app namespace labelled for sidecar injection, ``istio-system``, and the mesh config with
access logs on, as Istio reads it from the ``istio`` ConfigMap's ``mesh`` key (docs/fidelity.md
§2.3: sidecars log nothing unless ``accessLogFile`` is set, and their log is the evidence the
tests read). ``ingress_route`` is the Gateway and VirtualService that let the ingress reach
a mesh's entry Service.
"""

from __future__ import annotations

import textwrap

ACCESS_LOGS = "accessLogFile: /dev/stdout\n"


def mesh_preamble(namespace: str, mesh_config: str = ACCESS_LOGS) -> str:
    """Those three objects as YAML documents, ending with a ``---`` for the test's own."""
    return textwrap.dedent(f"""\
        apiVersion: v1
        kind: Namespace
        metadata:
          name: {namespace}
          labels: {{istio-injection: enabled}}
        ---
        apiVersion: v1
        kind: Namespace
        metadata:
          name: istio-system
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: istio
          namespace: istio-system
        data:
          mesh: |
        """) + textwrap.indent(mesh_config, " " * 4) + "---\n"


def ingress_route(namespace: str, service: str, *, gateway: str, name: str,
                  host: str = "*", port: int = 8080) -> str:
    """A Gateway on the ingress gateway's port 80 for any host, and the VirtualService ``name``
    bound to it that routes ``host`` to ``service``: an Istio gateway routes only what a
    Gateway-bound VirtualService names (docs/fidelity.md §1.6). Two YAML documents."""
    return textwrap.dedent(f"""\
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata:
          name: {gateway}
          namespace: {namespace}
        spec:
          selector: {{istio: ingressgateway}}
          servers:
          - port: {{number: 80, name: http, protocol: HTTP}}
            hosts: ["*"]
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: {name}
          namespace: {namespace}
        spec:
          hosts: ["{host}"]
          gateways: [{gateway}]
          http:
          - route:
            - destination: {{host: {service}, port: {{number: {port}}}}}
        """)
