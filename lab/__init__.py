"""The end-to-end lab: the seed's topology (``lab/seed.clab.yml``) built with network namespaces,
an FRR router, node agents, a client, and a long-running controller that plays the cluster's
control plane and kubelets (``lab.controller``).  Run it with ``python -m lab``."""
