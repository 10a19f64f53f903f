"""Shared fixtures. The TFF runtime is started once per test session."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _synthetic_cache(tmp_path_factory):
  os.environ["DOPAMINE_TFF_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tff_runtime():
  from dopamine_tff import runtime

  rt = runtime.start()
  yield rt
  runtime.shutdown()


@pytest.fixture(scope="session")
def digits():
  """The shared small federation: digits, K=4 hospitals, 400 examples."""
  from dopamine_tff.data import loaders

  return loaders.load(loaders.DataConfig(dataset="digits", num_hospitals=4, num_examples=400))


@pytest.fixture(scope="session")
def data(digits):
  """The same federation under the name most trainer tests use."""
  return digits
