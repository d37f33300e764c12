"""The object store: its protocol (``protocol``) and its two backends, the embedded SQLite store
(``sqlite`` with ``sqlite_tx`` for its transactions and locking, ``sqlite_schema`` for the file
format) and the Kubernetes API (``kube`` over ``kube_api`` and ``kube_informer``)."""
