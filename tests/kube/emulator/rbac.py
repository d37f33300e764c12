"""RBAC authorization as kube-apiserver's RBAC authorizer does it, from Role/ClusterRole objects and their
bindings (the manifests in ``configs/kubernetes/``).

A request's attributes (user, verb, API group, resource with its subresource, namespace, name) are allowed
when a rule of a role bound to the user or one of its groups covers them: a ClusterRoleBinding grants its
ClusterRole everywhere, a RoleBinding grants its Role (or a ClusterRole) in the binding's namespace only.
A rule with ``resourceNames`` covers only requests that name one of them (never a create or a list).
The group ``system:masters`` is allowed everything, as the API server's superuser group.
A refusal is the API server's 403 ``Forbidden`` Status, message and details as it writes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ANONYMOUS",
    "Attributes",
    "Authorizer",
    "User",
    "forbidden_message",
    "service_account",
    "verb_of",
]

Obj = dict[str, Any]

SUPERUSER_GROUP = "system:masters"


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ("system:authenticated",)


ANONYMOUS = User("system:anonymous", ("system:unauthenticated",))


def service_account(namespace: str, name: str, *extra_groups: str) -> User:
    """A ServiceAccount's identity, with the groups the token authenticator gives it."""
    return User(
        f"system:serviceaccount:{namespace}:{name}",
        (
            "system:serviceaccounts",
            f"system:serviceaccounts:{namespace}",
            "system:authenticated",
            *extra_groups,
        ),
    )


@dataclass(frozen=True)
class Attributes:
    """What a resource request asks, as the API server's RequestInfo resolves it."""

    user: User
    verb: str  # get list watch create update patch delete deletecollection
    group: str  # "" for core
    resource: str  # plural, e.g. "pods"
    subresource: str = ""  # "" or "status"
    namespace: str = ""
    name: str = ""


def verb_of(method: str, *, named: bool, watch: bool) -> str:
    """The RBAC verb of an HTTP request."""
    if method == "GET":
        return "get" if named else ("watch" if watch else "list")
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


@dataclass(frozen=True)
class _Rule:
    groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    names: frozenset[str]

    def covers(self, a: Attributes) -> bool:
        resource = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
        return (
            ("*" in self.groups or a.group in self.groups)
            and ("*" in self.verbs or a.verb in self.verbs)
            and (
                "*" in self.resources
                or resource in self.resources
                or (bool(a.subresource) and f"{a.resource}/*" in self.resources)
            )
            and (not self.names or a.name in self.names)
        )


def _rules(role: Obj) -> tuple[_Rule, ...]:
    return tuple(
        _Rule(
            frozenset(r.get("apiGroups") or ()),
            frozenset(r.get("resources") or ()),
            frozenset(r.get("verbs") or ()),
            frozenset(r.get("resourceNames") or ()),
        )
        for r in role.get("rules") or ()
    )


def _subject_matches(subject: Mapping[str, Any], user: User) -> bool:
    kind = subject.get("kind")
    if kind == "ServiceAccount":
        return user.name == f"system:serviceaccount:{subject.get('namespace')}:{subject.get('name')}"
    if kind == "User":
        return user.name == subject.get("name")
    if kind == "Group":
        return subject.get("name") in user.groups
    return False


@dataclass(frozen=True)
class _Grant:
    namespace: str  # "" for a ClusterRoleBinding: everywhere
    subjects: tuple[Mapping[str, Any], ...]
    rules: tuple[_Rule, ...]


class Authorizer:
    """Decisions from a fixed set of RBAC objects (other kinds in ``objects`` are ignored)."""

    def __init__(self, objects: Iterable[Obj]) -> None:
        objs = [o for o in objects if isinstance(o, dict)]
        cluster_roles = {o["metadata"]["name"]: o for o in objs if o.get("kind") == "ClusterRole"}
        roles = {
            (o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
            for o in objs
            if o.get("kind") == "Role"
        }
        grants: list[_Grant] = []
        for b in objs:
            kind = b.get("kind")
            if kind not in ("ClusterRoleBinding", "RoleBinding"):
                continue
            ref = b["roleRef"]
            ns = b["metadata"].get("namespace", "") if kind == "RoleBinding" else ""
            if ref["kind"] == "ClusterRole":
                role = cluster_roles.get(ref["name"])
            else:
                role = roles.get((ns, ref["name"]))
            if role is None:
                continue  # a binding to a missing role grants nothing, as in the API server
            grants.append(_Grant(ns, tuple(b.get("subjects") or ()), _rules(role)))
        self._grants = tuple(grants)

    def allows(self, a: Attributes) -> bool:
        if SUPERUSER_GROUP in a.user.groups:
            return True
        for g in self._grants:
            if g.namespace and g.namespace != a.namespace:
                continue
            if not any(_subject_matches(s, a.user) for s in g.subjects):
                continue
            if any(r.covers(a) for r in g.rules):
                return True
        return False


def forbidden_message(a: Attributes) -> str:
    """The API server's message for a refused request, e.g. ``spidersubnets.spiderpool.spidernet.io "s1"
    is forbidden: User "..." cannot update resource "spidersubnets" in API group "spiderpool.spidernet.io"
    at the cluster scope``."""
    what = f"{a.resource}.{a.group}" if a.group else a.resource
    if a.name:
        what += f' "{a.name}"'
    resource = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
    where = f'in the namespace "{a.namespace}"' if a.namespace else "at the cluster scope"
    return (
        f'{what} is forbidden: User "{a.user.name}" cannot {a.verb} resource "{resource}" '
        f'in API group "{a.group}" {where}'
    )
