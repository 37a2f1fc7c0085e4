"""The one exception type that means "the user gave us something we cannot use".

The CLI maps it to exit code 2 and prints its message on one line; anything else is a bug (exit 1).
"""


class UserError(Exception):
    """Bad input or a refused operation; the message names the problem in one line."""
