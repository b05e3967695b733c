"""User-facing errors: bad config, bad data, bad checkpoint, bad CLI flag.

The CLI turns a `UserError` into one line `error: ...` on stderr and exit status 2, no traceback.
The message must name the file, field or row and say what is allowed.
"""


class UserError(Exception):
    """An error caused by input the user can fix. Message: one line, names the culprit."""


class RunStopped(Exception):
    """A run that cannot go on (a trainer rank died): one line `error: ...` naming what happened and how to resume,
    exit status 1; its last checkpoint is intact."""


def first_line(e: Exception, limit: int = 200) -> str:
    """The first line of an exception's message (a library's multi-line complaint), or its type's name."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__
