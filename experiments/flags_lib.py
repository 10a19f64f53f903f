"""Flags -> configs, shared by the binaries; helpers here take values, never flags.

Every binary's flag that names a config field has the field's name, so one
mapping (``config_from``) builds TrainConfig, DataConfig and LoopOptions from
a dict of flag values (``flags.FLAGS.flag_values_dict()``, read in ``main``
only). The binaries' exit codes and error lines: experiments/cli_lib.py.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses

from dopamine_tff import configs
from dopamine_tff import presets
from dopamine_tff import runtime
from dopamine_tff import transport
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


# run_experiment's hyper-parameter flags default to None: a bare command runs
# the recipe of its --setting (README, "The bare command"), not one value per
# flag shared by five settings that need different ones.
RECIPE_FIELDS = (
  "rounds",
  "sampling_prob",
  "batch_size",
  "local_epochs",
  "client_fraction",
  "noise_multiplier",
  "l2_norm_clip",
  "learning_rate",
  "lr_schedule",
  "ema_decay",
  "eval_every",
)


def recipe_defaults(values: Mapping) -> tuple[dict, str]:
  """The values of the recipe flags left unset (None), and the recipe's name.

  The recipe is the preset run of ``--setting``: the ``cpu`` preset's (tuned
  for the built-in data, results/cpu) on synthetic and digits data, the
  ``paper`` preset's (the paper's hyper-parameters) on aptos and eyepacs. On
  the preset's own data set an unset ``--image_size`` is the preset's too (32 on
  synthetic, 224 on aptos), so the bare command is one seed of
  ``reproduce_paper --preset=cpu --settings=fscdp``. The TF Privacy
  baseline counts rounds in epochs and samples fixed batches: it gets the
  recipe's epochs and its expected batch q N (240 on the cpu preset's data).
  """
  name = "paper" if values["dataset"] in ("aptos", "eyepacs") else "cpu"
  preset = presets.get(name)
  recipe = preset.settings[values["setting"]]
  filled = {k: getattr(recipe, k) for k in RECIPE_FIELDS if values.get(k) is None}
  if values["setting"] == "cdp" and values.get("cdp_impl") == "tf_privacy":
    if "rounds" in filled:
      filled["rounds"] = max(1, round(recipe.rounds * recipe.sampling_prob))
    if "batch_size" in filled:  # the recipe's expected batch q N on the preset's data
      n = presets.APTOS_TRAIN if name == "paper" else preset.data.num_examples
      n = n if name == "paper" else round(n * (1 - preset.data.test_fraction))
      filled["batch_size"] = max(1, round(recipe.sampling_prob * n))
  if values["dataset"] == preset.data.dataset and values.get("image_size") is None:
    filled["image_size"] = preset.data.image_size
  return filled, f"{name} preset, setting {values['setting']}"


SECAGG_PLUS_FROM = configs.SECAGG_PLUS_FROM


@dataclasses.dataclass(frozen=True)
class RunConfigs:
  data: loaders.DataConfig
  train: configs.TrainConfig
  runtime: runtime.RuntimeConfig
  options: configs.LoopOptions
  warnings: tuple = ()  # flags given that this setting does not use
  recipe: dict = dataclasses.field(default_factory=dict)  # unset flags the recipe filled (used)
  recipe_name: str = ""


def run_configs(values: Mapping, present: set, given: set | None = None) -> RunConfigs:
  """run_experiment's configs from its flag values, checked before any data is read.

  Args:
    values: flag name -> value.
    present: the flags given on the command line (K defaults to the number of
      --hospital_dirs unless --num_hospitals is given).
    given: the flags given with a value other than their default (default:
      `present`); each must act in this run (check_flags_act).
  """
  recipe, recipe_name = recipe_defaults(values)
  values = {**values, **recipe}
  num_hospitals = values["num_hospitals"]
  if values["hospital_dirs"] and "num_hospitals" not in present:
    num_hospitals = len(values["hospital_dirs"])
  if values.get("secure_aggregation", "auto") is None:  # unset: the library's default
    values = {**values, "secure_aggregation": "auto"}
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
  warnings = check_flags_act(present if given is None else given, train, data)
  if train.trainable != "all" and not train.init_weights:
    warnings.append(
      f"--trainable={train.trainable} without --init_weights: the frozen layers keep random "
      "weights from --seed"
    )
  options = config_from(configs.LoopOptions, values)
  if options.resume and options.overwrite:
    raise ValueError("--resume and --overwrite: pick one (continue the run, or replace it)")
  rt = runtime_config(values)
  used = {
    k: v for k, v in recipe.items() if k not in _SETTING_FLAGS or _SETTING_FLAGS[k][0](train, data)
  }
  return RunConfigs(data, train, rt, options, tuple(warnings), used, recipe_name)


# Flags that say how this start acts, never what the run is: a resumed run
# does not take them from its record.
_PER_START = ("resume", "overwrite", "output_dir")


def resumed_values(values: Mapping, present: set, recorded: Mapping) -> tuple[dict, set, list]:
  """A resumed run's flag values: its recorded ones, with those given now on top.

  A bare ``--resume`` continues the run it names with every value that run was
  started with (its budget, rounds and recipe among them), never with today's
  defaults. A given flag overrides its recorded value: the fields of
  resume.RESUMABLE_CHANGES may change (listed in the returned changes), any
  other difference is refused later by the checkpoint's identity.

  Args:
    values: this start's flag values.
    present: the flags given on this command line.
    recorded: the run's hparams.json (its flag values and a few derived keys).

  Returns:
    (values, the flags now set: given or recorded, changes as log lines).
  """
  inherited = {
    k: recorded[k] for k in recorded if k in values and k not in present and k not in _PER_START
  }
  merged = {**values, **inherited}
  changes = []
  for name in resume.RESUMABLE_CHANGES:
    if name not in present or name not in recorded or recorded[name] == merged[name]:
      continue
    before, after = recorded[name], merged[name]
    line = f"--{name} {before!r} -> {after!r}"
    if name == "target_epsilon" and before is not None and after > before:
      line += " (the budget is raised: this run may spend more privacy than it was started with)"
    elif name == "target_epsilon":
      line += " (the budget is lowered)" if before is not None else " (a budget is set)"
    changes.append(line)
  return merged, set(present) | set(inherited), changes


def runtime_config(values: Mapping) -> runtime.RuntimeConfig:
  """The TFF runtime's config from run_experiment's flags (ValueError, one line)."""
  addresses = tuple(values.get("worker_addresses") or ())
  if values.get("worker_address"):
    if addresses:
      raise ValueError("--worker_address and --worker_addresses: give the list only")
    addresses = (values["worker_address"],)
  tls = None
  if values.get("worker_tls_ca"):
    tls = transport.TlsConfig(
      ca_cert=values["worker_tls_ca"],
      client_cert=values.get("worker_tls_cert"),
      client_key=values.get("worker_tls_key"),
      server_name=values.get("worker_tls_server_name"),
    )
  elif values.get("worker_tls_cert") or values.get("worker_tls_key"):
    raise ValueError("--worker_tls_cert and --worker_tls_key need --worker_tls_ca")
  elif values.get("worker_tls_server_name"):
    raise ValueError("--worker_tls_server_name needs --worker_tls_ca")
  return runtime.RuntimeConfig(
    max_concurrent_computation_calls=values["max_concurrent_calls"],
    worker_binary=values["worker_binary"],
    addresses=addresses,
    num_workers=values["num_workers"],
    tls=tls,
    insecure_transport=values.get("insecure_transport", False),
    unreachable_after_s=values.get("worker_unreachable_s", 20.0),
    data_transport=values.get("worker_data", "auto"),
  )


def _tfp(t):
  return t.tf_privacy_baseline


def _dp_sgd(t):
  return t.setting == "fscdp" or (t.setting == "cdp" and not _tfp(t))


_SECAGG = "with --secure_aggregation=secagg or secagg_plus"
_SETTING_FLAGS = {
  "sampling_prob": (lambda t, d: _dp_sgd(t), "fscdp and cdp (ours); the others use --batch_size"),
  "batch_size": (lambda t, d: not _dp_sgd(t), "c, f, fpdp and cdp with --cdp_impl=tf_privacy"),
  "local_epochs": (lambda t, d: t.setting in ("f", "fpdp"), "f and fpdp"),
  "client_fraction": (lambda t, d: t.setting in ("f", "fpdp"), "f and fpdp"),
  "cdp_impl": (lambda t, d: t.setting == "cdp", "cdp"),
  "secure_sum_bound": (lambda t, d: _dp_sgd(t), "fscdp and cdp (ours)"),
  "min_surviving_hospitals": (lambda t, d: t.setting == "fscdp", "fscdp"),
  "dropout_prob": (lambda t, d: t.setting in ("f", "fpdp", "fscdp"), "f, fpdp and fscdp"),
  "dropout_schedule": (lambda t, d: t.setting in ("f", "fpdp", "fscdp"), "f, fpdp and fscdp"),
  **{
    name: (lambda t, d: t.private, "the private settings cdp, fpdp and fscdp")
    for name in (
      "noise_multiplier",
      "l2_norm_clip",
      "delta",
      "target_epsilon",
      "accountant",
      "hardened_noise",
      "privacy_unit",
    )
  },
}
# Flags that act only with another flag: given without it, they are refused
# (a run never silently ignores them).
_DEPENDENT_FLAGS = {
  "dirichlet_alpha": (lambda t, d: d.partition == "dirichlet", "--partition=dirichlet"),
  "data_dir": (lambda t, d: d.dataset in ("aptos", "eyepacs"), "--dataset=aptos or eyepacs"),
  **{
    name: (lambda t, d: t.secure_aggregation_for(d.num_hospitals) != "none", _SECAGG)
    for name in (
      "secagg_threshold",
      "secagg_neighbours",
      "secagg_prg",
      "secagg_server_model",
      "secagg_adversarial_fraction",
      "secagg_dropout_rate",
      "secagg_unmask_dropout_prob",
    )
  },
  **{
    name: (lambda t, d: t.runtime == "tff" and not _tfp(t), "--runtime=tff (TFF's worker)")
    for name in (
      "num_workers",
      "max_concurrent_calls",
      "worker_binary",
      "worker_address",
      "worker_addresses",
      "worker_tls_ca",
      "worker_tls_cert",
      "worker_tls_key",
      "worker_tls_server_name",
      "insecure_transport",
      "worker_unreachable_s",
      "worker_data",
    )
  },
}


def check_flags_act(given: set, train: configs.TrainConfig, data: loaders.DataConfig) -> list:
  """Refuses a flag given (with a non-default value) that only acts with another flag
  (ValueError); returns warnings for hyper-parameters this setting does not use (a
  command line shared by the five settings is legitimate)."""
  for name in sorted(given & set(_DEPENDENT_FLAGS)):
    acts, where = _DEPENDENT_FLAGS[name]
    if not acts(train, data):
      raise ValueError(f"--{name} has no effect in this run; it acts only {where}")
  warnings = []
  for name in sorted(given & set(_SETTING_FLAGS)):
    acts, where = _SETTING_FLAGS[name]
    if not acts(train, data):
      warnings.append(
        f"--{name} has no effect with --setting={train.setting} (it applies to {where})"
      )
  return warnings


def preset_settings(name: str, settings) -> presets.Preset:
  """The preset `name`, refusing settings it does not define (ValueError)."""
  preset = presets.get(name)
  unknown = set(settings) - set(preset.settings)
  if unknown:
    raise ValueError(f"unknown settings {sorted(unknown)}")
  return preset
