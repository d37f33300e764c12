"""The leader-only controllers: loops over the store that the agent holding the Lease runs.

``leader`` bundles them for the agent; ``gc`` is the IP garbage collector (its decisions are the pure
``ipam.gc_policy``), ``pool`` the pool controller (statuses, terminating pools and subnets let go once
empty), ``subnet`` the SpiderSubnet controller (auto pools, adoption of orphan pools) and ``owner_gc``
the owner-reference GC (pools of a subnet being deleted).  They sit above the service layer
(``ipam.service``, ``ipam.admin``, ``ipam.report``), which sits above the store and the pure core.
"""
