"""dopamine_tff: differentially private federated learning on medical images.

Implements Dopamine (Malekzadeh et al., "Dopamine: Differentially Private
Federated Learning on Medical Data", PPAI-21, arXiv 2101.11693) on TensorFlow
Federated and TensorFlow Privacy.
"""

import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

# TensorFlow's C++ info logs drown the per-round log lines; users can override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TF 2.14's CUDA wheels print three "Unable to register cuDNN/cuFFT/cuBLAS
# factory" errors at import on every machine, GPU or not: harmless (XLA and
# TF both try to register the plugins) but alarming before every --help.
_NOISE = re.compile(rb"Unable to register cu(DNN|FFT|BLAS) factory")


def _import_tensorflow_quietly() -> None:
  """Imports TensorFlow with those three lines removed from stderr (fd 2)."""
  if "tensorflow" in sys.modules:
    return
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError):  # no real fd 2 (e.g. some embedded interpreters)
    import tensorflow  # noqa: F401

    return
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      import tensorflow  # noqa: F401
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      kept = [line for line in capture.read().splitlines(True) if not _NOISE.search(line)]
      if kept:
        os.write(2, b"".join(kept))


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Makes the first ``import tensorflow`` after this package's import quiet.

  TensorFlow is imported only when a module that needs it is (importing the
  TensorFlow-free ``dopamine_tff.accounting`` took 15-25 s when this package
  imported TensorFlow eagerly; about 0.5 s now).
  """

  def find_spec(self, name, path=None, target=None):
    if name != "tensorflow":
      return None
    if self in sys.meta_path:
      sys.meta_path.remove(self)
    _import_tensorflow_quietly()
    return importlib.machinery.ModuleSpec(name, self, is_package=True)

  def create_module(self, spec):
    return sys.modules["tensorflow"]

  def exec_module(self, module):
    del module  # already executed by _import_tensorflow_quietly


if os.environ.get("DOPAMINE_TFF_SHOW_CUDA_REGISTRATION") != "1" and "tensorflow" not in sys.modules:
  sys.meta_path.insert(0, _QuietTensorFlowFinder())
