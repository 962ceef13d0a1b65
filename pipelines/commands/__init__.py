"""Subcommands of ``portrait``, one module per area; each exposes ``register(commands)``.

``commands`` is the ``add_subparsers`` object of the top-level parser. A handler receives the parsed
arguments and raises ``PortraitError`` (or ``ValueError``) for a caller's mistake; ``pipelines.cli``
turns that into one ``portrait: error: ...`` line and exit status 2.
"""
