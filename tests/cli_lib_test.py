"""experiments/cli_lib.py: the binaries' exit codes and one-line errors."""

import os
import signal
import subprocess
import sys

import pytest

from dopamine_tff.program import resume
from experiments import cli_lib


@pytest.mark.parametrize(
  "error, code, text",
  [
    (ValueError("bad q"), 2, "tool: error: bad q"),
    (resume.Interrupted(3, True), 130, "tool: interrupted after round 3"),
    (
      resume.Interrupted(3, True, signal.SIGTERM),
      143,
      "tool: interrupted by SIGTERM after round 3",
    ),
  ],
)
def test_one_error_policy(error, code, text, capsys):
  with (
    pytest.raises(SystemExit) as exit_info,
    cli_lib.one_line_errors("tool", "start again", where="/out"),
  ):
    raise error
  assert exit_info.value.code == code
  err = capsys.readouterr().err.strip()
  assert err.startswith(text) and len(err.splitlines()) == 1


def test_a_second_ctrl_c_exits_at_once_and_quietly():
  """It once ended in 30 lines of TFF tracebacks. (A subprocess: it leaves
  with os._exit.)"""
  code = (
    "from experiments import cli_lib\n"
    "with cli_lib.one_line_errors('tool', 'start again'):\n"
    "  raise KeyboardInterrupt\n"
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
    [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 130
  assert proc.stderr.strip() == "tool: interrupted; start again"
