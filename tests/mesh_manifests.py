"""What every local mesh a test writes for itself starts with (tests/integration/conftest.py's
echo mesh, the AMQP client's mesh in tests/data/amqp_client.py, the fault-injection scenario):
the app namespace labelled for sidecar injection, ``istio-system``, and the mesh config with
access logs on, as Istio reads it from the ``istio`` ConfigMap's ``mesh`` key (docs/fidelity.md
§2.3: sidecars log nothing unless ``accessLogFile`` is set, and their log is the evidence the
tests read).
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
