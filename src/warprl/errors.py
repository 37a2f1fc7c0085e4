"""The one exception type that means "the user gave us something we cannot use".

The CLI maps it to exit code 2 and prints its message on one line; anything else is a bug (exit 1).
"""


class UserError(Exception):
    """Bad input or a refused operation; the message names the problem in one line."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name if the message is empty), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__
