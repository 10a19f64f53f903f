"""experiments/tff_worker: one line when it serves, exit 0 on SIGTERM, exit 1 when
its worker dies, one line and exit 2 on bad flags; nothing left running."""

import os
import re
import signal
import subprocess
import sys
import tempfile

import pytest

from dopamine_tff import worker_gate
from dopamine_tff import worker_process
from tests import procs
from tests import tls_certs

pytestmark = pytest.mark.e2e  # starts binaries or worker processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(*args):
  return subprocess.Popen(
    [sys.executable, "-m", "experiments.tff_worker", "--port=0", *args],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def serving(proc) -> int:
  line = proc.stdout.readline()
  match = re.match(r"tff_worker: serving a TFF worker on port (\d+): ", line)
  assert match, line + proc.stderr.read()[-2000:]
  return int(match.group(1))


_CERTS = tls_certs.make(tempfile.mkdtemp(prefix="tff_worker_test_"))


def fingerprint(path):
  with open(path, "rb") as f:
    return worker_gate.fingerprint_of_pem(f.read())


def descendants(pid):
  out = []
  for child in procs.children(pid):
    out += [child, *descendants(child)]
  return out


@pytest.mark.parametrize(
  "args,message",
  [
    ([], "give --tls_cert and --tls_key"),
    (["--insecure_transport", "--cpus=x"], "--cpus 'x' is not a list"),
    (["--insecure_transport", "extra"], "unexpected arguments"),
    # As the docstring once showed it: any client could run code on this host.
    (["--tls_cert={server}", "--tls_key={server_key}"], "TLS without --client_ca"),
    (
      ["--tls_cert={server}", "--tls_key={server_key}", "--client_ca={ca}"],
      "pin the driver with --allowed_clients",
    ),
    (["--insecure_transport", "--bind=0.0.0.0"], "plain gRPC on 0.0.0.0: anyone who reaches"),
  ],
)
def test_bad_flags_get_one_line_and_exit_2(args, message):
  args = [a.format(**_CERTS) for a in args]
  proc = start(*args)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 2, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("tff_worker: error: ") and message in lines[0]


def test_sigterm_stops_it_cleanly(tmp_path):
  proc = start("--insecure_transport", f"--log_file={tmp_path / 'w.log'}")
  serving(proc)
  children = descendants(proc.pid)
  assert children, "no worker was started"
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=30)
  assert proc.returncode == 0, err
  assert out.strip() == "tff_worker: stopped"
  assert all(procs.dead(c) for c in children)


def test_a_worker_that_dies_ends_it_with_exit_1(tmp_path):
  log = tmp_path / "w.log"
  proc = start("--insecure_transport", f"--log_file={log}")
  serving(proc)
  (worker,) = procs.children(proc.pid)
  os.kill(worker, signal.SIGKILL)
  out, _ = proc.communicate(timeout=30)
  assert proc.returncode == 1
  assert f"the TFF worker exited (code -9); see {log}" in out


@pytest.mark.skipif(
  worker_process.namespaces_allowed() is not None, reason="no unprivileged network namespaces"
)
def test_a_tls_worker_stops_cleanly_with_its_namespace(tmp_path):
  certs = tls_certs.make(str(tmp_path))
  proc = start(
    f"--tls_cert={certs['server']}",
    f"--tls_key={certs['server_key']}",
    f"--client_ca={certs['ca']}",
    f"--allowed_clients={fingerprint(certs['client'])}",
    f"--log_file={tmp_path / 'w.log'}",
  )
  serving(proc)
  children = descendants(proc.pid)
  assert len(children) == 2  # the namespace's relay and the worker in it
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=30)
  assert proc.returncode == 0, err
  assert all(procs.dead(c) for c in children)
