"""Turn a resource URL into what it names: type, version, namespace, name, subresource."""

from __future__ import annotations

from dataclasses import dataclass

from localmesh.errors import NotFound
from localmesh.resources import ResourceRegistry, ResourceType

__all__ = ["Target", "parse_target"]


@dataclass(frozen=True)
class Target:
    """One request target: a collection (name None) or an object, maybe a subresource."""

    rtype: ResourceType
    version: str
    namespace: str | None  # None: all namespaces, or a cluster-scoped type
    name: str | None
    subresource: str = ""

    @property
    def api_version(self) -> str:
        return self.rtype.api_version(self.version)


def _not_found() -> NotFound:
    return NotFound("the server could not find the requested resource")


def parse_target(registry: ResourceRegistry, group: str, version: str,
                 segments: list[str]) -> Target:
    """Parse the path segments after ``/api/v1`` or ``/apis/<group>/<version>``.

    Shapes: ``plural[/name[/sub]]`` and ``namespaces/<ns>/plural[/name[/sub]]``;
    ``namespaces/<ns>[/status]`` is the Namespace object itself.
    """
    namespace: str | None = None
    if (len(segments) >= 3 and segments[0] == "namespaces"
            and registry.by_plural(group, segments[2]) is not None):
        namespace, segments = segments[1], segments[2:]
    if not segments or len(segments) > 3 or not all(segments):
        raise _not_found()
    rtype = registry.by_plural(group, segments[0])
    if rtype is None or version not in rtype.versions:
        raise _not_found()
    if namespace is not None and not rtype.namespaced:
        raise _not_found()
    if namespace is None and rtype.namespaced and len(segments) > 1:
        raise _not_found()
    name = segments[1] if len(segments) > 1 else None
    sub = segments[2] if len(segments) > 2 else ""
    if sub and sub not in rtype.subresources:
        raise _not_found()
    return Target(rtype, version, namespace, name, sub)
