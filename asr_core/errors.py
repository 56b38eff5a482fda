"""One error type for bad user input, always naming where the problem is."""
from __future__ import annotations


class InputError(ValueError):
    """Bad input: a manifest row, a config key, a job file entry.

    ``where`` is a file, ``file:line`` or ``file: key`` so the user can jump to it.
    """

    def __init__(self, where: str, message: str):
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}")

    def __reduce__(self):
        # Ray carries an exception across processes by pickling it; the default reduction
        # re-calls __init__ with ``self.args`` (one string), which lost the type and message.
        return type(self), (self.where, self.message)
