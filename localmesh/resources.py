"""The resource types the Kubernetes API subset serves.

A resource type is identified by (group, plural). Versions of one group share
storage: an Istio VirtualService created as ``v1alpha3`` is readable as ``v1``,
as on a real API server. Kinds found in manifests that are not built in are
registered on the fly so they are kept and served, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ResourceRegistry", "ResourceType", "split_api_version"]


@dataclass(frozen=True)
class ResourceType:
    """One kind of object the API serves."""

    group: str  # "" for the core group
    versions: tuple[str, ...]
    kind: str
    plural: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()

    @property
    def preferred_version(self) -> str:
        return self.versions[0]

    def api_version(self, version: str | None = None) -> str:
        v = version or self.preferred_version
        return f"{self.group}/{v}" if self.group else v


def split_api_version(api_version: str) -> tuple[str, str]:
    """Split ``apps/v1`` into ("apps", "v1") and ``v1`` into ("", "v1")."""
    if "/" in api_version:
        group, version = api_version.split("/", 1)
        return group, version
    return "", api_version


_ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")

_BUILTIN: tuple[ResourceType, ...] = (
    ResourceType("", ("v1",), "Namespace", "namespaces", namespaced=False, short_names=("ns",)),
    ResourceType("", ("v1",), "Pod", "pods", short_names=("po",), subresources=("log", "status")),
    ResourceType("", ("v1",), "Service", "services", short_names=("svc",)),
    ResourceType("", ("v1",), "Endpoints", "endpoints", short_names=("ep",)),
    ResourceType("", ("v1",), "Event", "events", short_names=("ev",)),
    ResourceType("", ("v1",), "ConfigMap", "configmaps", short_names=("cm",)),
    ResourceType("", ("v1",), "Secret", "secrets"),
    ResourceType("", ("v1",), "ServiceAccount", "serviceaccounts", short_names=("sa",)),
    ResourceType("apps", ("v1",), "Deployment", "deployments", short_names=("deploy",),
                 subresources=("status", "scale")),
    ResourceType("apps", ("v1",), "ReplicaSet", "replicasets", short_names=("rs",),
                 subresources=("status",)),
    ResourceType("chaos-mesh.org", ("v1alpha1",), "NetworkChaos", "networkchaos"),
    ResourceType("chaos-mesh.org", ("v1alpha1",), "PodChaos", "podchaos"),
    ResourceType("chaos-mesh.org", ("v1alpha1",), "HTTPChaos", "httpchaos"),
    ResourceType("networking.istio.io", _ISTIO_VERSIONS, "VirtualService", "virtualservices",
                 short_names=("vs",), subresources=("status",)),
    ResourceType("networking.istio.io", _ISTIO_VERSIONS, "DestinationRule", "destinationrules",
                 short_names=("dr",), subresources=("status",)),
    ResourceType("networking.istio.io", _ISTIO_VERSIONS, "Gateway", "gateways",
                 short_names=("gw",)),
    ResourceType("telemetry.istio.io", ("v1", "v1alpha1"), "Telemetry", "telemetries"),
)


def _plural_of(kind: str) -> str:
    """Guess a kind's plural the way kubectl's default RESTMapper does."""
    lower = kind.lower()
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        return lower + "es"
    if lower.endswith("y") and lower[-2:-1] not in ("a", "e", "i", "o", "u"):
        return lower[:-1] + "ies"
    return lower + "s"


@dataclass
class ResourceRegistry:
    """Known resource types, looked up by (group, plural) or (group, kind)."""

    _by_plural: dict[tuple[str, str], ResourceType] = field(default_factory=dict)
    _by_kind: dict[tuple[str, str], ResourceType] = field(default_factory=dict)

    @classmethod
    def with_builtins(cls) -> ResourceRegistry:
        registry = cls()
        for rtype in _BUILTIN:
            registry.register(rtype)
        return registry

    def register(self, rtype: ResourceType) -> ResourceType:
        existing = self._by_kind.get((rtype.group, rtype.kind))
        if existing is not None:
            if set(rtype.versions) <= set(existing.versions):
                return existing
            rtype = ResourceType(
                existing.group, existing.versions + tuple(
                    v for v in rtype.versions if v not in existing.versions),
                existing.kind, existing.plural, existing.namespaced,
                existing.short_names, existing.subresources)
        self._by_plural[(rtype.group, rtype.plural)] = rtype
        self._by_kind[(rtype.group, rtype.kind)] = rtype
        return rtype

    def register_kind(self, api_version: str, kind: str) -> ResourceType:
        """Register a kind seen in a manifest (plural guessed the way kubectl does)."""
        group, version = split_api_version(api_version)
        known = self._by_kind.get((group, kind))
        if known is not None and version in known.versions:
            return known
        plural = _plural_of(kind)
        return self.register(ResourceType(group, (version,), kind, plural))

    def by_plural(self, group: str, plural: str) -> ResourceType | None:
        return self._by_plural.get((group, plural))

    def by_kind(self, group: str, kind: str) -> ResourceType | None:
        return self._by_kind.get((group, kind))

    def for_object(self, obj: dict[str, object]) -> ResourceType | None:
        group, _ = split_api_version(str(obj.get("apiVersion", "")))
        return self._by_kind.get((group, str(obj.get("kind", ""))))

    def all(self) -> list[ResourceType]:
        return list(self._by_plural.values())

    def groups(self) -> dict[str, tuple[str, ...]]:
        """Map each non-core group to its versions."""
        result: dict[str, tuple[str, ...]] = {}
        for rtype in self._by_plural.values():
            if rtype.group:
                merged = list(result.get(rtype.group, ()))
                merged += [v for v in rtype.versions if v not in merged]
                result[rtype.group] = tuple(merged)
        return result
