"""The control plane: REST sidecar (aiohttp), auth and RBAC, audit, metrics, catalog service,
store-backed catalog following, router registration and manager election."""
