"""Who is who across devices: accounts and devices linked into identities (connected components).

Accounts and devices are linked only through persons who allow the ``cross_device_sync`` purpose,
and never through a shared device. See ``build_identity_graph``.
"""

from profiling.identity._graph import (
    DEFAULT_MAX_ACCOUNTS_PER_DEVICE,
    DEVICE_IDENTITY_SCHEMA,
    PERSON_IDENTITY_SCHEMA,
    IdentityGraph,
    build_identity_graph,
)

__all__ = [
    "DEFAULT_MAX_ACCOUNTS_PER_DEVICE",
    "DEVICE_IDENTITY_SCHEMA",
    "PERSON_IDENTITY_SCHEMA",
    "IdentityGraph",
    "build_identity_graph",
]
