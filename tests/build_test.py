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
    if name.endswith("_lib"):  # shared by the binaries, not one
      assert re.search(rf'py_library\(\s*name = "{name}"', text), name
    elif name != "__init__":
      assert re.search(rf'py_binary\(\s*name = "{name}"', text), name


def test_the_wheel_holds_every_package(tmp_path):
  """Issue 20: pyproject listed packages by hand and the wheel lacked dopamine_tff/secagg."""
  import shutil
  import subprocess
  import sys
  import zipfile

  src = tmp_path / "src"
  src.mkdir()
  for name in ("dopamine_tff", "experiments"):
    shutil.copytree(
      os.path.join(ROOT, name), src / name, ignore=shutil.ignore_patterns("__pycache__")
    )
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), src / name)
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "wheel",
      "--no-deps",
      "--no-build-isolation",
      "-q",
      ".",
      "-w",
      str(tmp_path / "out"),
    ],
    cwd=src,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  (wheel,) = (tmp_path / "out").glob("*.whl")
  with zipfile.ZipFile(wheel) as z:
    packaged = {n.rsplit("/", 1)[0] for n in z.namelist() if n.endswith("__init__.py")}
  tree = {
    os.path.relpath(os.path.dirname(p), ROOT)
    for top in ("dopamine_tff", "experiments")
    for p in glob.glob(os.path.join(ROOT, top, "**", "__init__.py"), recursive=True)
  }
  assert packaged == tree


def _libraries():
  """name -> (srcs, deps) of every py_library with srcs."""
  text, _ = _build_srcs()
  out = {}
  for block in re.findall(r"py_library\((.*?)\n\)", text, re.S):
    name = re.search(r'name = "([^"]+)"', block).group(1)
    srcs = re.search(r"srcs = \[([^\]]*)\]", block)
    deps = re.search(r"deps = \[([^\]]*)\]", block)
    if srcs:
      out[name] = (
        re.findall(r'"([^"]+)"', srcs.group(1)),
        set(re.findall(r'":([^"]+)"', deps.group(1))) if deps else set(),
      )
  return out


def _project_imports(path):
  """The project files a module imports (from its import statements)."""
  import ast

  with open(os.path.join(ROOT, path)) as f:
    tree = ast.parse(f.read())

  def resolve(name):
    base = os.path.join(*name.split("."))
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
      if os.path.isfile(os.path.join(ROOT, candidate)):
        return candidate
    return None

  files = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dopamine_tff"):
      # `from pkg import submodule` needs the submodule; `from module import
      # name` (or a name a package __init__ defines) needs the module itself.
      for a in node.names:
        files.add(resolve(f"{node.module}.{a.name}") or resolve(node.module))
    elif isinstance(node, ast.Import):
      files.update(resolve(a.name) for a in node.names if a.name.startswith("dopamine_tff"))
  return files - {path, None}


def test_library_deps_match_the_imports():
  """Issue 20: BUILD deps drifted from the imports in three places, unseen."""
  libs = _libraries()
  owner = {src: name for name, (srcs, _) in libs.items() for src in srcs}
  wrong = []
  for name, (srcs, deps) in libs.items():
    if not srcs[0].startswith("dopamine_tff/"):
      continue
    wanted = {owner[f] for src in srcs for f in _project_imports(src)}
    wanted -= {name, "dopamine_tff_init", "data_init", "secagg_init"}  # package __init__s
    if wanted != deps:
      wrong.append(f"{name}: missing {sorted(wanted - deps)}, extra {sorted(deps - wanted)}")
  assert not wrong, "\n".join(wrong)
