"""Discovery documents: /version, /api, /api/v1, /apis, /apis/<group>[/<version>].

They are built from the registry on every request so that kinds registered from
manifests after start-up are discoverable too (``DynamicClient`` resolves
resources through these documents).
"""

from __future__ import annotations

from typing import Any

from localmesh.resources import ResourceRegistry, ResourceType

__all__ = ["api_groups", "api_resources", "api_versions", "group_document", "version_info"]

Doc = dict[str, Any]

_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
# `kubectl get all` and `kubectl get istio-io` resolve these categories.
_CATEGORIES = {("", "pods"): ["all"], ("", "services"): ["all"],
               ("apps", "deployments"): ["all"], ("apps", "replicasets"): ["all"],
               ("chaos-mesh.org", "networkchaos"): ["chaos-mesh"],
               ("chaos-mesh.org", "podchaos"): ["chaos-mesh"],
               ("chaos-mesh.org", "httpchaos"): ["chaos-mesh"]}
_SUBRESOURCE_VERBS = {"status": ["get", "patch", "update"], "log": ["get"],
                      "scale": ["get", "patch", "update"]}


def version_info() -> Doc:
    return {"major": "1", "minor": "31", "gitVersion": "v1.31.0-meshchaos",
            "gitCommit": "meshchaos-local", "gitTreeState": "clean",
            "buildDate": "2026-11-26T00:00:00Z", "goVersion": "go1.22.0",
            "compiler": "gc", "platform": "linux/amd64"}


def api_versions(server_address: str) -> Doc:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                            "serverAddress": server_address}]}


def _singular(rtype: ResourceType) -> str:
    return rtype.kind.lower()


def _categories(rtype: ResourceType) -> list[str]:
    if rtype.group == "networking.istio.io":
        return ["istio-io", "networking-istio-io"]
    return list(_CATEGORIES.get((rtype.group, rtype.plural), []))


def api_resources(registry: ResourceRegistry, group: str, version: str) -> Doc | None:
    """The APIResourceList of one group version, or None when it is not served."""
    types = [r for r in registry.all() if r.group == group and version in r.versions]
    if not types:
        return None
    resources: list[Doc] = []
    for rtype in sorted(types, key=lambda r: r.plural):
        resources.append({
            "name": rtype.plural, "singularName": _singular(rtype),
            "namespaced": rtype.namespaced, "kind": rtype.kind, "verbs": list(_VERBS),
            "shortNames": list(rtype.short_names), "categories": _categories(rtype),
        })
        for sub in rtype.subresources:
            kind = "Scale" if sub == "scale" else ("Pod" if sub == "log" else rtype.kind)
            resources.append({
                "name": f"{rtype.plural}/{sub}", "singularName": "",
                "namespaced": rtype.namespaced, "kind": kind,
                "verbs": list(_SUBRESOURCE_VERBS.get(sub, ["get"])),
            })
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources}


def group_document(registry: ResourceRegistry, group: str) -> Doc | None:
    """The APIGroup document of a group, or None when it is not served."""
    versions = registry.groups().get(group)
    if not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group,
            "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
            "preferredVersion": {"groupVersion": f"{group}/{versions[0]}",
                                 "version": versions[0]}}


def api_groups(registry: ResourceRegistry) -> Doc:
    groups = [group_document(registry, g) for g in sorted(registry.groups())]
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [{k: v for k, v in g.items() if k not in ("kind", "apiVersion")}
                       for g in groups if g is not None]}
