"""The ``edgefrac`` command: thin click commands over the library.

Only this package imports click. Commands that need TensorFlow (train,
convert, evaluate of a Keras model) import ``converters`` inside the command,
so ``edgefrac --help`` and ``edgefrac infer`` work on a device without it.
Results go to stdout, diagnostics (logs, progress) to stderr.
"""

from __future__ import annotations

import errno
import logging
import os
import sys

import click

from edgefrac import __version__
from edgefrac.errors import DriftExceededError, EdgefracError, UsageError
from edgefrac.exitcodes import ExitCode

logger = logging.getLogger("edgefrac")

_STDOUT_WRITE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EIO, getattr(errno, "EDQUOT", errno.ENOSPC)}


def configure_logging(verbosity: int) -> None:
    if verbosity <= 0:
        level = logging.WARNING
    elif verbosity == 1:
        level = logging.INFO
    else:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class EdgefracGroup(click.Group):
    """Turn library errors into one-line messages and documented exit codes."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _silence_stdout()
            ctx.exit(ExitCode.BROKEN_PIPE)
        except UsageError as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(ExitCode.USAGE)
        except DriftExceededError as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(ExitCode.DRIFT_EXCEEDED)
        except EdgefracError as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(ExitCode.RUNTIME_FAILURE)
        except OSError as error:
            # Library code turns its own file errors into EdgefracError with the path, so a bare
            # disk-full or I/O error without a file name comes from writing the results to stdout.
            if error.filename is not None or error.errno not in _STDOUT_WRITE_ERRORS:
                raise
            _silence_stdout()
            click.echo(
                f"Error: cannot write the results to standard output ({error.strerror}); "
                "free space on the disk it goes to, or send it elsewhere",
                err=True,
            )
            ctx.exit(ExitCode.RUNTIME_FAILURE)


@click.group(cls=EdgefracGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgefrac")
@click.option("-v", "--verbose", count=True, help="Log more to stderr: -v for info, -vv for debug.")
def main(verbose: int) -> None:
    """Run quantized fracture classifiers on radiographs, convert and benchmark them."""
    configure_logging(verbose)
    if sys.stdout is None:
        # Python sets sys.stdout to None when file descriptor 1 was closed at start-up, and click.echo
        # then drops every result without an error.
        raise EdgefracError("standard output is closed, so no results can be written; redirect it to a file")


def echo_document(text: str) -> None:
    """Write ``text`` and a newline to stdout, all of it or a BrokenPipeError.

    Python's buffered stdout can accept part of a large write, then drop the
    rest without an error when the reader has gone. This loop keeps writing
    until every byte is out, so a closed pipe surfaces as an error.
    """
    stream = click.get_text_stream("stdout")
    stream.flush()
    data = memoryview((text + "\n").encode(stream.encoding or "utf-8", errors="backslashreplace"))
    while data:
        written = stream.buffer.write(data)
        data = data[written if written is not None else len(data):]
    stream.buffer.flush()


def _silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so flushing stdout at exit raises no second BrokenPipeError."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def _register() -> None:
    from edgefrac.cli import commands  # noqa: F401  (each module adds its commands to main)


_register()
