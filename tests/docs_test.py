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


# Documented shell commands that no test runs, and why (the one list of them).
# Every `python -m experiments.<binary>` command is run by that binary's tests
# at tiny sizes (checked below); these are the commands that are not binaries.
NOT_RUN = {
  "make": "make test and make test-e2e are what CI runs; make demo is run_experiment at 400 rounds",
  "python3.11": "the install, which CI's clean clone performs",
  ".venv/bin/pip": "the install, which CI's clean clone performs",
  "openssl": "the certificate recipe: tests/tls_certs.py makes the same certificates",
  "issue": "the certificate recipe's shell function (openssl)",
  "issue()": "the certificate recipe's shell function (openssl)",
  "for": "a shell loop over documented binary commands",
  "done": "a shell loop's end",
  "}": "a shell function's end",
  "python -c": "converts torchvision's weights: needs torchvision and the internet",
}


def _commands():
  for page in PAGES:
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", _text(page), re.S):
      for line in block.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
          yield _name(page), re.sub(r"\s+", " ", line.split(" #")[0])


def _tests_text():
  return "\n".join(_text(p) for p in glob.glob(os.path.join(ROOT, "tests", "*_test.py")))


def test_every_documented_command_is_run_by_a_test_or_listed_as_not_run():
  tests = _tests_text()
  missing = []
  for page, command in _commands():
    binary = re.search(r"-m experiments\.([a-z_]+)", command)
    if binary:
      b = binary.group(1)
      if b != "flags_reference" and not re.search(
        rf'experiments\.{b}\b|run_binary\("{b}"|from experiments import {b}\b', tests
      ):
        missing.append(f"{page}: {command[:80]} (no test runs experiments.{b})")
    elif not any(command == k or command.startswith(k + " ") for k in NOT_RUN):
      missing.append(f"{page}: {command[:80]} (not run by a test, not in NOT_RUN)")
  assert not missing, "\n".join(missing)
