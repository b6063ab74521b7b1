"""Process exit codes of the ``edgefrac`` command, documented in the README."""

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    """Every input was scored (or the command finished its work)."""

    RUNTIME_FAILURE = 1
    """The model, the interpreter or the output could not be used."""

    USAGE = 2
    """Invalid option or argument (click's own usage errors use 2 as well)."""

    SOME_INPUTS_FAILED = 3
    """The run finished but at least one input has an error row instead of a score."""

    DRIFT_EXCEEDED = 4
    """A ``--max-drift`` gate failed: the quantized model is worse, not broken."""

    INTERRUPTED = 130
    """Stopped by SIGINT (Ctrl-C); 128 + the signal number, as shells report it."""

    BROKEN_PIPE = 141
    """The reader of stdout went away (``| head``); 128 + SIGPIPE, as shells report a process SIGPIPE killed."""
