"""Errors that reach the user as one line and exit code 2, instead of a traceback."""


class UserError(Exception):
    """A problem with the user's input: shown as one line, exit code 2."""
