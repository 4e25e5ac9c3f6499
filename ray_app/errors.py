"""The base of the errors whose message is written for a person: what was wrong and where.

`rayapp` says any of them in one line (`cli.main`), whichever command raised it, instead of a
traceback; an exception of any other type is a bug and keeps its traceback.
"""


class RayAppError(Exception):
    """An error a user can act on from its message alone."""
