"""User-facing errors: bad config, bad data, bad checkpoint, bad CLI flag.

The CLI turns a `UserError` into one line `error: ...` on stderr and exit status 2, no traceback.
The message must name the file, field or row and say what is allowed.
"""


class UserError(Exception):
    """An error caused by input the user can fix. Message: one line, names the culprit."""
