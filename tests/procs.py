"""Test helper: the child processes of a process, and whether one is gone (from /proc)."""

import os
import time


def children(pid):
  """PIDs whose parent is `pid`."""
  out = []
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        with open(f"/proc/{name}/stat") as f:
          fields = f.read().rsplit(")", 1)[1].split()
      except OSError:
        continue
      if int(fields[1]) == pid:
        out.append(int(name))
  return out


def dead(pid, timeout_s=10.0):
  """Whether `pid` has exited (or is a zombie) within `timeout_s`."""
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    try:
      with open(f"/proc/{pid}/stat") as f:
        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
          return True
    except OSError:
      return True
    time.sleep(0.1)
  return False
