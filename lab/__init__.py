"""The end-to-end lab: the seed's topology (``lab/seed.clab.yml``) built with network namespaces,
an FRR router, node agents, a client and a kubelet stand-in.  Run it with ``python -m lab``."""
