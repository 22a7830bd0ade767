"""User-facing errors and the exit codes the CLI gives them (docs/errors.md lists them).

Anything a researcher can fix by changing a path, a flag or a file raises a :class:`SbirError`
subclass. The CLI prints its message as one line and exits with the class's ``exit_code``, never a
stack trace: a traceback for "your dataset is not where you said" wastes everybody's time, and a
distinct code lets a script tell a missing dataset from a diverged run.
"""


class SbirError(Exception):
    """An error caused by the user's input or environment, reported as one line."""

    exit_code = 2


class ConfigError(SbirError):
    """A command-line option, configuration file or override is invalid."""

    exit_code = 2


class DataError(SbirError):
    """A dataset copy, split, embeddings file or run record is missing, incomplete or inconsistent."""

    exit_code = 3


class WeightsError(SbirError):
    """Model weights or a training checkpoint are unavailable, unreadable or do not match the run."""

    exit_code = 4


class DivergedError(SbirError):
    """Training or evaluation produced a non-finite number; nothing is recorded."""

    exit_code = 5


class OutputError(SbirError):
    """An output path cannot be written (checked before any work starts)."""

    exit_code = 6


class OutOfMemoryError(SbirError):
    """A step does not fit the memory it may use: predicted before training (no micro-batch fits the
    budget) or met on the GPU; the line names the need, the budget and the knob."""

    exit_code = 7


INTERRUPTED = 130  # Ctrl-C: rerun with --resume
TERMINATED = 143  # SIGTERM (128 + 15, as a shell reports it): rerun with --resume
EXIT_CODES = {cls.__name__: cls.exit_code for cls in (ConfigError, DataError, WeightsError, DivergedError, OutputError,
                                                        OutOfMemoryError)}
