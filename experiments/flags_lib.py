"""Flags -> configs, shared by the binaries; helpers here take values, never flags.

Every binary's flag that names a config field has the field's name, so one
mapping (``config_from``) builds TrainConfig, DataConfig and LoopOptions from
a dict of flag values (``flags.FLAGS.flag_values_dict()``, read in ``main``
only). ``one_line_errors`` is the binaries' single error policy: a
configuration or data error is one line on stderr and exit code 2, before
anything is written; a stop is exit code 130 with how to resume.
"""

from __future__ import annotations

from collections.abc import Mapping
import contextlib
import dataclasses
import sys

from dopamine_tff import configs
from dopamine_tff import presets
from dopamine_tff import runtime
from dopamine_tff.data import loaders
from dopamine_tff.program import resume


def config_from(cls, values: Mapping, **overrides):
  """`cls` (a config dataclass) with every field named in `values` taken from it."""
  names = {f.name for f in dataclasses.fields(cls)}
  kw = {k: v for k, v in values.items() if k in names}
  kw.update(overrides)
  return cls(**kw)


def parse_schedule(text: str) -> tuple:
  """'3:0,2;5:1' -> ((3, (0, 2)), (5, (1,))). Raises ValueError naming the bad part."""
  out = []
  for part in filter(None, (p.strip() for p in text.split(";"))):
    try:
      round_text, hospitals = part.split(":")
      out.append((int(round_text), tuple(int(h) for h in hospitals.split(",") if h.strip())))
    except ValueError:
      raise ValueError(f"dropout_schedule: cannot parse {part!r}; expected 'round:h1,h2'") from None
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class RunConfigs:
  data: loaders.DataConfig
  train: configs.TrainConfig
  runtime: runtime.RuntimeConfig
  options: configs.LoopOptions


def run_configs(values: Mapping, present: set) -> RunConfigs:
  """run_experiment's configs from its flag values, checked before any data is read.

  Args:
    values: flag name -> value.
    present: the flags given on the command line (K defaults to the number of
      --hospital_dirs unless --num_hospitals is given).
  """
  num_hospitals = values["num_hospitals"]
  if values["hospital_dirs"] and "num_hospitals" not in present:
    num_hospitals = len(values["hospital_dirs"])
  data = config_from(
    loaders.DataConfig,
    values,
    hospital_dirs=tuple(values["hospital_dirs"]),
    num_hospitals=num_hospitals,
  )
  train = config_from(
    configs.TrainConfig, values, dropout_schedule=parse_schedule(values["dropout_schedule"])
  )
  configs.check_compatible(train, data)
  rt = runtime.RuntimeConfig(
    max_concurrent_computation_calls=values["max_concurrent_calls"],
    worker_binary=values["worker_binary"],
    address=values["worker_address"],
    num_workers=values["num_workers"],
  )
  return RunConfigs(data, train, rt, config_from(configs.LoopOptions, values))


def preset_settings(name: str, settings) -> presets.Preset:
  """The preset `name`, refusing settings it does not define (ValueError)."""
  preset = presets.get(name)
  unknown = set(settings) - set(preset.settings)
  if unknown:
    raise ValueError(f"unknown settings {sorted(unknown)}")
  return preset


@contextlib.contextmanager
def one_line_errors(binary: str, resume_hint: str, where: str | None = None):
  """Turns a ValueError into one line and exit 2, a stop into exit 130.

  Args:
    binary: the name the line starts with.
    resume_hint: how to resume, printed on a Ctrl-C outside the round loop.
    where: the output directory, named when a run stops.
  """
  try:
    yield
  except ValueError as e:
    print(f"{binary}: error: {e}", file=sys.stderr)
    sys.exit(2)
  except resume.Interrupted as e:
    print(f"{binary}: {e}" + (f" (in {where})" if where else ""), file=sys.stderr)
    sys.exit(130)
  except KeyboardInterrupt:  # a second Ctrl-C, or one outside the round loop
    print(f"{binary}: interrupted; {resume_hint}", file=sys.stderr)
    sys.exit(130)
