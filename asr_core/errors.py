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
