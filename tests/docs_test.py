"""The documentation works: README.md and docs/ name only what exists.

* README.md is a front page (at most 250 lines) and no page names an issue
  number (a reader has never seen our tracker).
* Every relative link resolves to a file, every repository path written in
  backticks exists, and every --flag of a `python -m experiments.<binary>`
  command is a flag of that binary (as docs/flags.md lists them).
* docs/flags.md is what experiments/flags_reference.py generates from the
  binaries' own --helpfull (stale: rerun it).
"""

import glob
import os
import re

import pytest

from experiments import flags_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_PATH = re.compile(r"`((?:dopamine_tff|experiments|tests|results|docs)/[A-Za-z0-9_./-]+)`")
_COMMAND = re.compile(r"python -m experiments\.([a-z_]+)((?:[^\n`]|\\\n)*)")
_FLAG = re.compile(r"--([a-z][a-z0-9_]*)")
_ABSL = {"helpfull", "help", "helpshort", "flagfile", "undefok"}


def _text(page):
  with open(page) as f:
    return f.read()


def _name(page):
  return os.path.relpath(page, ROOT)


def test_readme_is_a_front_page():
  with open(os.path.join(ROOT, "README.md")) as f:
    lines = f.read().splitlines()
  assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_no_page_names_an_issue_number(page):
  hits = re.findall(r"\b[Ii]ssue \d+", _text(page))
  assert not hits, f"{_name(page)} names {hits}"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_resolve(page):
  base = os.path.dirname(page)
  broken = []
  for target in _LINK.findall(_text(page)):
    if re.match(r"[a-z]+:", target) or target.startswith("#"):
      continue
    path = os.path.normpath(os.path.join(base, target.split("#")[0]))
    if not os.path.exists(path):
      broken.append(target)
  assert not broken, f"{_name(page)}: broken links {broken}"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_named_paths_exist(page):
  missing = []
  for path in _PATH.findall(_text(page)):
    path = path.rstrip(".")
    if "<" in path or "*" in path:
      continue
    if not glob.glob(os.path.join(ROOT, path)):
      missing.append(path)
  assert not missing, f"{_name(page)} names paths that do not exist: {missing}"


def _documented_flags() -> dict[str, set[str]]:
  out, binary = {}, None
  for line in _text(os.path.join(ROOT, "docs", "flags.md")).splitlines():
    m = re.match(r"## `python -m experiments\.([a-z_]+)`", line)
    if m:
      binary = m.group(1)
      out[binary] = set()
    elif binary and re.match(r"  --", line):
      out[binary].add(re.match(r"  --(?:\[no\])?([a-z0-9_]+)", line).group(1))
  return out


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_commands_use_flags_their_binary_has(page):
  flags = _documented_flags()
  unknown = []
  for binary, rest in _COMMAND.findall(_text(page)):
    if binary == "flags_reference":  # not an absl binary: --check only
      continue
    if binary not in flags:
      unknown.append(f"experiments.{binary} (not a binary)")
      continue
    known = flags[binary] | _ABSL
    for flag in _FLAG.findall(rest.split("#")[0]):
      if flag not in known and flag.removeprefix("no") not in known:
        unknown.append(f"{binary} --{flag}")
  assert not unknown, f"{_name(page)}: {unknown}"


def test_flags_reference_is_fresh():
  assert flags_reference.render() == _text(
    flags_reference.OUTPUT
  ), "docs/flags.md is stale: run python -m experiments.flags_reference"
