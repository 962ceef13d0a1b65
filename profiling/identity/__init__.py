"""Who is who across devices: each eligible person is one identity, with the devices only they signed in on.

A device joins a person's identity only when no other account ever signed in on it, the person's
first and last sign-in on it are at least ``TRUSTED_AFTER`` (24 hours) apart (a device used for a few
hours is not trusted, even across midnight UTC), and the person allows the ``cross_device_sync``
purpose; two accounts are never linked. See ``build_identity_graph``.
"""

from profiling.identity._graph import (
    DEVICE_IDENTITY_SCHEMA,
    LINKING_RULE,
    PERSON_IDENTITY_SCHEMA,
    TRUSTED_AFTER,
    IdentityGraph,
    build_identity_graph,
    identity_report,
)

__all__ = [
    "DEVICE_IDENTITY_SCHEMA",
    "LINKING_RULE",
    "PERSON_IDENTITY_SCHEMA",
    "TRUSTED_AFTER",
    "IdentityGraph",
    "build_identity_graph",
    "identity_report",
]
