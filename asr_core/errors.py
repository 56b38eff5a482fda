"""One error type for bad user input, always naming where the problem is."""
from __future__ import annotations


class InputError(ValueError):
    """Bad input: a manifest row, a config key, a job file entry.

    ``where`` is a file, ``file:line`` or ``file: key`` so the user can jump to it; ``key`` is
    the config key at fault when there is one (a caller that knows the key's line uses it).
    """

    def __init__(self, where: str, message: str, key: str | None = None):
        self.where = where
        self.message = message
        self.key = key
        super().__init__(f"{where}: {message}")

    def __reduce__(self):
        # Ray carries an exception across processes by pickling it; the default reduction
        # re-calls __init__ with ``self.args`` (one string), which lost the type and message.
        return type(self), (self.where, self.message, self.key)


class KeyProblem(ValueError):
    """Raised by a config's ``validate()``: a bad value of ``key``; ``from_dict`` turns it into an
    ``InputError`` that carries the key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)
