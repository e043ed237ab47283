"""The Kubernetes API subset of the local mesh, served by aiohttp over the ObjectStore.

Clients written for a real cluster (the ``kubernetes`` Python client, chaostoolkit-kubernetes,
``kubectl``-style discovery) talk to it unchanged: discovery documents, CRUD with merge and
JSON patches, the status subresource, pod logs and watch streams, and every error as a
Kubernetes ``Status``.
"""

from localmesh.apiserver.app import create_api_app
from localmesh.apiserver.logsource import LogSource

__all__ = ["LogSource", "create_api_app"]
