"""User-facing errors.

A `CmkdError` is a problem with the user's input (a missing folder, a bad file, a wrong band
count ...). The CLI prints its message on one line and exits non-zero without a traceback;
anything else is a bug and keeps its traceback.
"""


class CmkdError(Exception):
    """An error caused by the user's data or configuration; its message names the culprit."""
