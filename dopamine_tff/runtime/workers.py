"""The TFF worker processes this runtime starts, and how their deaths are reported."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading

import portpicker

from dopamine_tff import worker_process


class WorkerDied(RuntimeError):
  """A TFF worker this process started exited while the run needed it, or a
  worker at an address could not be reached."""


def describe_exit(returncode: int) -> str:
  """'signal 9 (SIGKILL)' or 'exit code 3'."""
  if returncode is not None and returncode < 0:
    try:
      return f"signal {-returncode} ({signal.Signals(-returncode).name})"
    except ValueError:
      return f"signal {-returncode}"
  return f"exit code {returncode}"


class Worker:
  """One C++ worker process that this Python process started and owns."""

  def __init__(self, binary: str, max_concurrent_computation_calls: int):
    if threading.current_thread() is not threading.main_thread():
      # PR_SET_PDEATHSIG fires when the *thread* that forked exits.
      raise RuntimeError("TFF workers must be started from the main thread")
    self.port = portpicker.pick_unused_port()
    self.log_path = os.path.join(
      tempfile.gettempdir(), f"dopamine_tff_worker_{os.getpid()}_{self.port}.log"
    )
    log = open(self.log_path, "wb")  # noqa: SIM115 (handed to the child)
    try:
      self.process = subprocess.Popen(
        [
          binary,
          f"--port={self.port}",
          f"--max_concurrent_computation_calls={max_concurrent_computation_calls}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        close_fds=True,
        preexec_fn=worker_process.child_setup(),
      )
    finally:
      log.close()
    self.address = f"localhost:{self.port}"
    self.stopping = False  # set before this process stops it on purpose

  @property
  def pid(self) -> int:
    return self.process.pid

  def alive(self) -> bool:
    return self.process.poll() is None

  def stop(self, timeout_s: float = 5.0) -> None:
    """Terminates the worker (SIGTERM, then SIGKILL), reaps it and removes its log.

    The log of a worker that died by itself is kept: the error names it.
    """
    died = self.process.poll() is not None and not self.stopping
    self.stopping = True
    if died:
      return
    if self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(timeout=timeout_s)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
    with contextlib.suppress(OSError):
      os.remove(self.log_path)
