"""The base of the errors whose message is written for a person: what was wrong and where.

`rayapp` says any of them in one line (`cli.main`), whichever command raised it, instead of a
traceback, and exits 2 for bad input (those that are also a `ValueError`: a config, a
contract, data) or 1 for the rest (a registry, a cluster, a lock). An exception of any other
type is a bug, or a failure whose traceback matters (`ValidationTaskError`), and keeps it.
"""


class RayAppError(Exception):
    """An error a user can act on from its message alone."""
