"""The pieces of the API emulator (``tests/kube_emulator.py``) that are pure functions over values:
RBAC authorization, object metadata and CRD schema rules, continue tokens, ownerReference garbage
collection and PATCH.  Each module says which part of kube-apiserver it stands for."""
