"""User-facing errors.

Anything a researcher can fix by changing a path, a flag or a file raises :class:`SbirError`.
The CLI prints its message as one line and exits non-zero, never a stack trace: a traceback
for "your dataset is not where you said" wastes everybody's time.
"""


class SbirError(Exception):
    """An error caused by the user's input or environment, reported as one line."""


class DataError(SbirError):
    """A dataset copy is missing, incomplete or inconsistent with the requested split."""


class WeightsError(SbirError):
    """Model weights are not available (offline, not cached, or a bad checkpoint file)."""


class ConfigError(SbirError):
    """A configuration file or override is invalid."""
