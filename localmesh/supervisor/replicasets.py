"""The Deployment and ReplicaSet controllers: keep the wanted number of pods in the store.

Like kube-controller-manager, these only write objects; running the pods is the
kubelet's job (``localmesh.supervisor.pods``). A pod being deleted (it carries a
``deletionTimestamp``) no longer counts as a replica, so a replacement is created
at once, with a new name, while the old one shuts down.

A changed pod template gets a new ReplicaSet and the old ones are scaled to zero
(the Recreate strategy: simpler than a rolling update, and the same end state).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging

from localmesh.documents import KubeObject
from localmesh.errors import AlreadyExists, ApiError, NotFound
from localmesh.store import ObjectStore, now_rfc3339
from localmesh.supervisor.naming import pod_name, replicaset_name, template_hash

__all__ = ["ReplicaSetController", "is_pod_ready", "owner_uid"]

log = logging.getLogger("localmesh.supervisor")


_HASH_LABEL = "pod-template-hash"


def owner_uid(obj: KubeObject) -> str | None:
    """The uid of the controlling owner of an object, if any."""
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def is_pod_ready(pod: KubeObject) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _by_owner(objects: list[KubeObject]) -> dict[str, list[KubeObject]]:
    grouped: dict[str, list[KubeObject]] = {}
    for obj in objects:
        uid = owner_uid(obj)
        if uid is not None:
            grouped.setdefault(uid, []).append(obj)
    return grouped


def _owner_ref(owner: KubeObject) -> KubeObject:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"],
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _replicas(obj: KubeObject) -> int:
    value = (obj.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


class ReplicaSetController:
    """Reconciles Deployments into ReplicaSets and ReplicaSets into Pods."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = False
        # What a reconcile reads of each pod: it counts pods, ready ones, deleting ones.
        self._pod_facts: dict[str, tuple[bool, bool]] = {}

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for plural in ("deployments", "replicasets"):
            self.store.subscribe(self._on_change, group="apps", plural=plural)
        self.store.subscribe(self._on_change, group="", plural="pods")
        self.reconcile()

    def stop(self) -> None:
        self._loop = None

    def _on_change(self, event: str, obj: KubeObject) -> None:
        # Store callbacks run inside the write: only note that work is due.
        if obj.get("kind") == "Pod" and not self._pod_changed(event, obj):
            return
        loop = self._loop
        if loop is None or self._pending or loop.is_closed():
            return
        self._pending = True
        loop.call_soon_threadsafe(self._run_pending)

    def _pod_changed(self, event: str, pod: KubeObject) -> bool:
        """False for a pod write a reconcile cannot see (a container started, a restart).

        A starting mesh writes each pod's status several times; each reconcile lists
        (copies) every Deployment, ReplicaSet and Pod, so skipping these halves the
        controller's share of the start-up CPU.
        """
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid"))
        if event == "DELETED":
            self._pod_facts.pop(uid, None)
            return True
        facts = (is_pod_ready(pod), bool(meta.get("deletionTimestamp")))
        if event == "MODIFIED" and self._pod_facts.get(uid) == facts:
            return False
        self._pod_facts[uid] = facts
        return True

    def _run_pending(self) -> None:
        self._pending = False
        if self._loop is not None:
            self.reconcile()

    def settle(self, passes: int = 3) -> None:
        """Reconcile now, until a pass writes nothing (at most ``passes``).

        Change events are handled on the next loop turn; whoever reports the mesh as up
        settles first, so Deployments and ReplicaSets already count the Ready pods (a
        Deployment's status follows its ReplicaSets' one pass later).
        """
        for _ in range(passes):
            before = self.store.resource_version()
            self.reconcile()
            if self.store.resource_version() == before:
                return

    def reconcile(self) -> None:
        """Bring every ReplicaSet and Deployment to its wanted state (idempotent)."""
        # One listing per kind per pass, of the stored objects themselves (no copies: a
        # pass only reads them and writes through the store), as pods are many.
        try:
            deployments = self.store.list_shared("apps", "deployments")
            owned_rs = _by_owner(self.store.list_shared("apps", "replicasets"))
            for deployment in deployments:
                self._sync_deployment(deployment, owned_rs.get(deployment["metadata"]["uid"], []))
            replicasets = self.store.list_shared("apps", "replicasets")
            pods = self.store.list_shared("", "pods")
            owned_pods = _by_owner(pods)
            for rs in replicasets:
                self._sync_replicaset(rs, owned_pods.get(rs["metadata"]["uid"], []))
            self._collect_orphans({d["metadata"]["uid"] for d in deployments}, replicasets, pods)
        except ApiError:
            # A concurrent delete raced us; the next change event reconciles again.
            log.debug("reconcile raced a concurrent change", exc_info=True)

    # -- deployments ----------------------------------------------------------------

    def _sync_deployment(self, deployment: KubeObject, owned: list[KubeObject]) -> None:
        meta = deployment["metadata"]
        owned = list(owned)
        if meta.get("deletionTimestamp"):
            return
        template = (deployment.get("spec") or {}).get("template") or {}
        phash = template_hash(template)
        name = replicaset_name(meta["name"], phash)
        wanted = _replicas(deployment)
        current = next((rs for rs in owned if rs["metadata"]["name"] == name), None)
        if current is None:
            current = self._create_replicaset(deployment, name, phash, wanted)
            owned.append(current)
        elif _replicas(current) != wanted:
            self._scale(deployment, current, wanted)
        for old in owned:
            if old["metadata"]["name"] != name and _replicas(old) != 0:
                self._scale(deployment, old, 0)
        self._deployment_status(deployment, current, owned)

    def _create_replicaset(self, deployment: KubeObject, name: str, phash: str,
                           replicas: int) -> KubeObject:
        spec = deployment.get("spec") or {}
        template = copy.deepcopy(spec.get("template") or {})
        tmeta = template.setdefault("metadata", {})
        tmeta.setdefault("labels", {})[_HASH_LABEL] = phash
        selector = copy.deepcopy(spec.get("selector") or {})
        selector.setdefault("matchLabels", {})[_HASH_LABEL] = phash
        rs: KubeObject = {
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": deployment["metadata"]["namespace"],
                         "labels": dict(tmeta["labels"]),
                         "annotations": {"deployment.kubernetes.io/desired-replicas":
                                         str(replicas)},
                         "ownerReferences": [_owner_ref(deployment)]},
            "spec": {"replicas": replicas, "selector": selector, "template": template},
        }
        try:
            created = self.store.create(rs)
        except AlreadyExists:
            return self.store.get("apps", "replicasets", rs["metadata"]["namespace"], name)
        self.store.record_event(deployment, "ScalingReplicaSet",
                                f"Scaled up replica set {name} to {replicas}",
                                component="deployment-controller")
        return created

    def _scale(self, deployment: KubeObject, rs: KubeObject, replicas: int) -> None:
        before = _replicas(rs)
        meta = rs["metadata"]
        self.store.patch("apps", "replicasets", meta["namespace"], meta["name"],
                         {"spec": {"replicas": replicas}})
        verb = "up" if replicas > before else "down"
        self.store.record_event(deployment, "ScalingReplicaSet",
                                f"Scaled {verb} replica set {meta['name']} to {replicas} "
                                f"from {before}", component="deployment-controller")

    def _deployment_status(self, deployment: KubeObject, current: KubeObject,
                           owned: list[KubeObject]) -> None:
        def total(key: str) -> int:
            return sum(int((rs.get("status") or {}).get(key) or 0) for rs in owned)

        wanted = _replicas(deployment)
        available = total("availableReplicas")
        status: KubeObject = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": total("replicas"),
            "updatedReplicas": int((current.get("status") or {}).get("replicas") or 0),
            "readyReplicas": total("readyReplicas"),
            "availableReplicas": available,
            "unavailableReplicas": max(wanted - available, 0),
        }
        old_status = deployment.get("status") or {}
        status["conditions"] = [
            self._condition(old_status, "Available", available >= wanted,
                            "MinimumReplicasAvailable" if available >= wanted
                            else "MinimumReplicasUnavailable",
                            "Deployment has minimum availability." if available >= wanted
                            else "Deployment does not have minimum availability."),
            self._condition(old_status, "Progressing", True, "NewReplicaSetAvailable",
                            f'ReplicaSet "{current["metadata"]["name"]}" has successfully '
                            "progressed."),
        ]
        self._write_status("deployments", deployment, status)

    @staticmethod
    def _condition(old_status: KubeObject, type_: str, ok: bool, reason: str,
                   message: str) -> KubeObject:
        value = "True" if ok else "False"
        previous = next((c for c in old_status.get("conditions") or []
                         if c.get("type") == type_), None)
        if previous is not None and previous.get("status") == value \
                and previous.get("reason") == reason:
            return dict(previous)
        now = now_rfc3339()
        return {"type": type_, "status": value, "reason": reason, "message": message,
                "lastUpdateTime": now, "lastTransitionTime": now}

    # -- replicasets ------------------------------------------------------------------

    def _sync_replicaset(self, rs: KubeObject, pods: list[KubeObject]) -> None:
        meta = rs["metadata"]
        active = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        wanted = 0 if meta.get("deletionTimestamp") else _replicas(rs)
        if len(active) < wanted:
            for _ in range(wanted - len(active)):
                active.append(self._create_pod(rs))
        elif len(active) > wanted:
            # Like the controller: give up unready pods first, then the youngest.
            def keep_first(pod: KubeObject) -> tuple[bool, str]:
                return is_pod_ready(pod), str(pod["metadata"].get("creationTimestamp", ""))

            doomed = sorted(active, key=keep_first)[: len(active) - wanted]
            for pod in doomed:
                self._delete_pod(rs, pod)
                active.remove(pod)
        ready = sum(1 for p in active if is_pod_ready(p))
        status = {"replicas": len(active), "fullyLabeledReplicas": len(active),
                  "readyReplicas": ready, "availableReplicas": ready,
                  "observedGeneration": meta.get("generation", 1)}
        self._write_status("replicasets", rs, status)

    def _create_pod(self, rs: KubeObject) -> KubeObject:
        template = copy.deepcopy((rs.get("spec") or {}).get("template") or {})
        tmeta = template.get("metadata") or {}
        rs_meta = rs["metadata"]
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name(rs_meta["name"]), "namespace": rs_meta["namespace"],
                         "labels": dict(tmeta.get("labels") or {}),
                         "annotations": dict(tmeta.get("annotations") or {}),
                         "ownerReferences": [_owner_ref(rs)]},
            "spec": template.get("spec") or {},
        }
        created = self.store.create(pod)
        self.store.record_event(rs, "SuccessfulCreate",
                                f"Created pod: {created['metadata']['name']}",
                                component="replicaset-controller")
        return created

    def _delete_pod(self, rs: KubeObject, pod: KubeObject) -> None:
        meta = pod["metadata"]
        try:
            self.store.delete("", "pods", meta["namespace"], meta["name"])
        except NotFound:
            return
        self.store.record_event(rs, "SuccessfulDelete", f"Deleted pod: {meta['name']}",
                                component="replicaset-controller")

    # -- garbage collection -------------------------------------------------------------

    def _collect_orphans(self, deployments: set[str], replicasets: list[KubeObject],
                         pods: list[KubeObject]) -> None:
        """Delete ReplicaSets whose Deployment is gone and pods whose ReplicaSet is gone."""
        live_rs = {rs["metadata"]["uid"] for rs in replicasets}
        for rs in replicasets:
            uid = owner_uid(rs)
            if uid is not None and uid not in deployments:
                meta = rs["metadata"]
                self.store.delete("apps", "replicasets", meta["namespace"], meta["name"])
                live_rs.discard(meta["uid"])
        for pod in pods:
            uid = owner_uid(pod)
            if uid is not None and uid not in live_rs and not pod["metadata"].get(
                    "deletionTimestamp"):
                self.store.delete("", "pods", pod["metadata"]["namespace"],
                                  pod["metadata"]["name"])

    def _write_status(self, plural: str, obj: KubeObject, status: KubeObject) -> None:
        if obj.get("status") == status:
            return
        with contextlib.suppress(NotFound):
            self.store.update_status(obj, status)
