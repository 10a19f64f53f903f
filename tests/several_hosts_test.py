"""One run over TFF workers started as separate processes (issue 23).

Loopback stands in for other hosts: the workers are started by
experiments/tff_worker, reached through --worker_addresses, and share nothing
with the driver but the network (and, in files mode, this file system).
"""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from dopamine_tff import worker_process
from tests import tls_certs
from tests.tff_worker_test import fingerprint
from tests.tff_worker_test import serving

pytestmark = pytest.mark.e2e  # starts binaries or worker processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
  "--setting=fscdp",  # the default SecAgg (masked sums) included
  "--dataset=digits",
  "--num_examples=400",
  "--num_hospitals=4",
  "--sampling_prob=0.1",
  "--noise_multiplier=1.0",
  "--l2_norm_clip=1.0",
  "--learning_rate=0.05",
  "--seed=3",
  "--insecure_seeded_noise",  # runs are compared bit for bit
]


@pytest.fixture
def workers(tmp_path):
  started = []

  def start(*args):
    n = len(started)
    proc = subprocess.Popen(
      [
        sys.executable,
        "-m",
        "experiments.tff_worker",
        "--port=0",
        f"--log_file={tmp_path / f'worker{n}.log'}",
        *(args or ["--insecure_transport"]),
      ],
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    started.append(proc)
    return proc, f"localhost:{serving(proc)}"

  yield start
  for proc in started:
    if proc.poll() is None:
      proc.send_signal(signal.SIGTERM)
      proc.wait(timeout=30)


def _run(out, *args, wait=True):
  cmd = [sys.executable, "-m", "experiments.run_experiment", *TINY, f"--output_dir={out}", *args]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  if not wait:
    return proc
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return proc


def _weights(out):
  with np.load(os.path.join(out, "final_weights.npz")) as f:
    return [f[k] for k in f.files]


def _summary(out):
  with open(os.path.join(out, "summary.json")) as f:
    return json.load(f)


def _same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_fscdp_over_two_separately_started_workers_is_one_worker_bit_for_bit(tmp_path, workers):
  _, a = workers()
  _, b = workers()
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  _run(one, "--rounds=3")
  _run(two, "--rounds=3", f"--worker_addresses={a},{b}")
  _same(_weights(one), _weights(two))
  traffic = _summary(two)["worker_traffic"]
  assert set(traffic) == {a, b}
  assert all(t["sent"] > 0 and t["received"] > 0 for t in traffic.values())  # both worked
  assert _summary(two)["secure_aggregation"]["mode"] == "secagg"


@pytest.mark.skipif(
  worker_process.namespaces_allowed() is not None, reason="no unprivileged network namespaces"
)
def test_inline_data_over_tls_with_client_certificates_gives_the_same_weights(tmp_path, workers):
  certs = tls_certs.make(str(tmp_path))
  tls = [f"--tls_cert={certs['server']}", f"--tls_key={certs['server_key']}"]
  pin = f"--allowed_clients={fingerprint(certs['client'])}"
  _, a = workers(*tls, f"--client_ca={certs['ca']}", pin)
  _, b = workers("--insecure_transport")
  files, inline = str(tmp_path / "files"), str(tmp_path / "inline")
  _run(files, "--rounds=3", f"--worker_addresses={b}")
  client = [
    f"--worker_tls_ca={certs['ca']}",
    f"--worker_tls_cert={certs['client']}",
    f"--worker_tls_key={certs['client_key']}",
  ]
  _run(inline, "--rounds=3", f"--worker_addresses={a}", "--worker_data=inline", *client)
  _same(_weights(files), _weights(inline))
  # The images really travelled in the requests: each round sent the 320
  # training images (8x8 float32, 82 kB) in place of a file reader per
  # hospital (a few kB of graph), 74 kB more per round when measured.
  sent_files = _summary(files)["worker_traffic"][b]["sent"]
  sent_inline = _summary(inline)["worker_traffic"][a]["sent"]
  assert sent_inline - sent_files > 3 * 0.8 * 320 * 8 * 8 * 4


def test_a_dead_worker_host_ends_the_run_naming_it_and_resume_continues_elsewhere(
  tmp_path, workers
):
  _, a = workers()
  doomed, b = workers()
  ref, out = str(tmp_path / "ref"), str(tmp_path / "run")
  args = ["--rounds=60", "--checkpoint_every=2", "--eval_every=30", "--worker_unreachable_s=3"]
  proc = _run(out, *args, f"--worker_addresses={a},{b}", wait=False)
  deadline = time.monotonic() + 300
  while not glob.glob(os.path.join(out, "checkpoints", "ckpt_*[0-9]")):
    assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
    time.sleep(0.02)
  doomed.kill()  # the host's worker dies with it (death signal)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 1, err[-2000:]
  ours = [li for li in err.splitlines() if li.startswith("run_experiment:")]
  assert len(ours) == 1 and f"the TFF worker at {b} cannot be reached" in ours[0], ours
  assert "rerun with --resume" in ours[0] and "Traceback" not in err
  saved = sorted(glob.glob(os.path.join(out, "checkpoints", "ckpt_*[0-9]")))
  assert int(saved[-1].rsplit("_", 1)[1]) < 60  # it stopped mid-run
  # Resume on the surviving worker alone: the run ends where an uninterrupted one does.
  _run(out, *args, "--resume", f"--worker_addresses={a}")
  _run(ref, *args)
  assert _summary(out)["rounds_run"] == 60
  _same(_weights(ref), _weights(out))


def test_an_unreachable_worker_is_one_line_before_any_data_is_read(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]  # nothing listens there
  cache = tmp_path / "cache"
  cache.mkdir()
  env = dict(os.environ, DOPAMINE_TFF_CACHE=str(cache))
  cmd = [
    sys.executable,
    "-m",
    "experiments.run_experiment",
    "--setting=fscdp",
    f"--worker_addresses=localhost:{port}",
    "--worker_unreachable_s=2",
    f"--output_dir={tmp_path / 'out'}",
  ]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1, proc.stderr[-2000:]
  ours = [li for li in proc.stderr.splitlines() if li.startswith("run_experiment:")]
  assert ours == [
    f"run_experiment: error: the TFF worker at localhost:{port} cannot be reached "
    "(not ready after 2 s)"
  ]
  assert "Traceback" not in proc.stderr
  assert list(cache.iterdir()) == []  # the data source was never touched
