"""The binaries' single error policy and their absl entry point.

``one_line_errors``: a configuration or data error is one line on stderr and
exit code 2, before anything is written; a dead worker or a failed write is
exit code 1; a stop is 128 + the signal (130 for Ctrl-C) with how to resume.
``run``: absl's app.run with --help exiting 0 and any usage error (an unknown
or malformed flag, a positional argument) one line and exit code 2.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from absl import app
from absl import flags

from dopamine_tff import runtime
from dopamine_tff.program import resume
from dopamine_tff.program import run_dir


@contextlib.contextmanager
def one_line_errors(binary: str, resume_hint: str, where: str | None = None):
  """Turns a ValueError into one line and exit 2, a stop into exit 130.

  Args:
    binary: the name the line starts with.
    resume_hint: how to resume, printed on a Ctrl-C outside the round loop.
    where: the output directory, named when a run stops.
  """
  try:
    yield
  except ValueError as e:
    print(f"{binary}: error: {e}", file=sys.stderr)
    sys.exit(2)
  except resume.Interrupted as e:  # the first Ctrl-C or SIGTERM: after a checkpointed round
    # Another Ctrl-C during the exit's cleanup would only print tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(f"{binary}: {e}" + (f" (in {where})" if where else ""), file=sys.stderr)
    sys.exit(128 + e.signum)
  except (runtime.WorkerDied, run_dir.WriteFailed) as e:
    print(f"{binary}: error: {e}", file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:  # a second Ctrl-C, or one outside the round loop
    print(f"{binary}: interrupted; {resume_hint}", file=sys.stderr)
    # At once and quietly: the checkpoints are atomic and the finally blocks
    # ran; a graceful shutdown could block on gRPC channels the interrupt left
    # half closed (seen), and TFF's threads would print tracebacks at exit.
    runtime.kill_workers()
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(130)


HELP_FLAGS = ("--help", "-help", "--helpshort", "--helpfull", "--helpxml", "-h", "-?")


def _parser(binary: str, positional: bool):
  def parse(argv):
    try:
      rest = flags.FLAGS(argv)
    except flags.Error as e:  # a malformed or unknown flag: one line, the usage code
      print(f"{binary}: error: {e}", file=sys.stderr)
      sys.exit(2)
    except SystemExit as e:  # absl's --help prints the help, then exits 1
      if e.code == 1 and any(a.split("=")[0] in HELP_FLAGS for a in argv[1:]):
        sys.exit(0)
      raise
    if len(rest) > 1 and not positional:
      print(
        f"{binary}: error: unexpected arguments {rest[1:]} (flags start with --)", file=sys.stderr
      )
      sys.exit(2)
    return rest

  return parse


def run(main, binary: str, positional: bool = False) -> None:
  """absl's app.run with the project's exit codes: --help 0, any usage error 2 in one line.

  Args:
    main: the binary's main(argv).
    binary: its name, starting every error line.
    positional: whether it takes positional arguments (otherwise one is refused).
  """

  def guarded(argv):
    try:
      return main(argv)
    except app.UsageError as e:  # absl would print the whole help first
      print(f"{binary}: error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(guarded, flags_parser=_parser(binary, positional))
