"""The one exception base of lnassist: anything a user can cause (bad file, bad argument)."""


class LnassistError(Exception):
    """A user-facing error: the command line prints its message on one line and exits with code 2."""
