"""BUILD names every Python file of the project, and only existing ones."""

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build_srcs():
  with open(os.path.join(ROOT, "BUILD")) as f:
    text = f.read()
  srcs = set()
  for block in re.findall(r"srcs\s*=\s*\[([^\]]*)\]", text):
    srcs.update(re.findall(r'"([^"]+)"', block))
  return text, srcs


def _python_files():
  files = set()
  for pattern in ("dopamine_tff/**/*.py", "experiments/**/*.py", "tests/**/*.py"):
    files.update(
      os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)
    )
  return files


def test_every_python_file_is_in_build():
  _, srcs = _build_srcs()
  missing = sorted(_python_files() - srcs)
  assert not missing, f"not in BUILD: {missing}"


def test_build_names_only_existing_files():
  _, srcs = _build_srcs()
  absent = sorted(s for s in srcs if not os.path.isfile(os.path.join(ROOT, s)))
  assert not absent, f"BUILD names missing files: {absent}"


def test_one_py_test_per_test_file_and_binaries_for_experiments():
  text, _ = _build_srcs()
  for path in glob.glob(os.path.join(ROOT, "tests", "*_test.py")):
    name = os.path.basename(path)[:-3]
    assert re.search(rf'py_test\(\s*name = "{name}"', text), name
  for path in glob.glob(os.path.join(ROOT, "experiments", "*.py")):
    name = os.path.basename(path)[:-3]
    if name != "__init__":
      assert re.search(rf'py_binary\(\s*name = "{name}"', text), name
