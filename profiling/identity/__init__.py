"""Who is who across devices: each eligible person is one identity, with the devices only they signed in on.

A device joins a person's identity only when no other account ever signed in on it and the person
allows the ``cross_device_sync`` purpose; two accounts are never linked. See ``build_identity_graph``.
"""

from profiling.identity._graph import (
    DEVICE_IDENTITY_SCHEMA,
    LINKING_RULE,
    PERSON_IDENTITY_SCHEMA,
    IdentityGraph,
    build_identity_graph,
    identity_report,
)

__all__ = [
    "DEVICE_IDENTITY_SCHEMA",
    "LINKING_RULE",
    "PERSON_IDENTITY_SCHEMA",
    "IdentityGraph",
    "build_identity_graph",
    "identity_report",
]
