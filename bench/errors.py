"""Exceptions the harness turns into data (a failed point) or into a one-line CLI error."""


class PointFailed(Exception):
    """The point could not be measured; `str(exc)` is the reason written to points.csv."""


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit status 2."""
