"""Why a pod cannot start, stated as Spiderpool's controllers state it in their events.

The IPAM answers a pod of an application whose SpiderSubnet auto-pool is missing with "try again
later" (the leader's subnet controller makes the pool).  When the pool cannot be made at all (the
SpiderSubnet has too few free addresses, the subnet is IPv6 while the application asks for IPv4,
...), the subnet controller says so only in its own log, and the pod would wait forever with "does
not exist yet".  ``auto_pool_reason`` runs the subnet controller's read-only planning step for the
pod's application and returns the reason it gives, as Spiderpool emits it in an event on the
application (``insufficient free IPs in the subnet: 5 needed, 3 free``).
"""

from __future__ import annotations

from ipam.autopool import AutoPoolError
from ipam.controllers.subnet import SubnetController, app_requests
from ipam.errors import IpamError, NotFound
from ipam.records import Obj
from ipam.store.protocol import Store
from ipam.workload import PodInfo, resolve_top_controller

__all__ = ["auto_pool_reason"]

DEFAULT_FLEXIBLE_IP_NUMBER = 1  # the agent's default (subnet.defaultFlexibleIPNumber)


def auto_pool_reason(store: Store, pod: Obj) -> str | None:
    """Why the auto pool of ``pod``'s application cannot be made or sized now, or None."""

    def get_owner(kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return store.get(kind, name, namespace)
        except NotFound:
            return None

    try:
        top = resolve_top_controller(PodInfo.from_obj(pod), get_owner)
        if top.app is None:
            return None
        requests = app_requests(top.app, default_flexible_ip_number=DEFAULT_FLEXIBLE_IP_NUMBER)
    except IpamError as exc:
        return str(exc)
    planner = SubnetController(store, default_flexible_ip_number=DEFAULT_FLEXIBLE_IP_NUMBER)
    for request in requests:
        try:
            planner._plan(request)  # reads only: the decision the leader would act on
        except AutoPoolError as exc:
            return str(exc)
        except IpamError:
            continue
    return None
