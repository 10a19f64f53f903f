"""The binaries' shared flags -> configs mapping and error policy."""

import pytest

from dopamine_tff import configs
from dopamine_tff import presets
from dopamine_tff.data import loaders
from experiments import flags_lib


def _values(**kw):
  """Every flag run_experiment defines, at its default (as flag_values_dict gives)."""
  default = configs.TrainConfig()
  values = {f: getattr(default, f) for f in default.__dataclass_fields__}
  values.update(
    dataset="digits",
    data_dir=None,
    hospital_dirs=[],
    image_size=None,
    num_hospitals=4,
    partition="iid",
    dirichlet_alpha=0.5,
    test_fraction=0.2,
    num_examples=0,
    dropout_schedule="",
    checkpoint_every=10,
    resume=False,
    tensorboard=True,
    audit=False,
    overwrite=False,
    max_concurrent_calls=-1,
    worker_binary=None,
    worker_address=None,
    num_workers=1,
    output_dir="/tmp/x",  # not a field: ignored
    verbosity=0,  # absl's own: ignored
  )
  values.update(kw)
  return values


def test_one_mapping_fills_every_config_from_same_named_flags():
  cfgs = flags_lib.run_configs(
    _values(rounds=7, seed=3, dropout_schedule="2:1", resume=True, num_workers=2), set()
  )
  assert cfgs.train.rounds == 7 and cfgs.train.seed == 3 and cfgs.data.seed == 3
  assert cfgs.train.dropout_schedule == ((2, (1,)),)
  assert cfgs.options.resume and cfgs.runtime.num_workers == 2
  assert cfgs.data == loaders.DataConfig(dataset="digits", num_hospitals=4, seed=3)


def test_k_follows_the_hospital_folders_unless_given():
  dirs = ["/a", "/b", "/c"]
  cfgs = flags_lib.run_configs(_values(dataset="aptos", hospital_dirs=dirs), set())
  assert cfgs.data.num_hospitals == 3 and cfgs.data.hospital_dirs == tuple(dirs)
  given = flags_lib.run_configs(
    _values(dataset="aptos", hospital_dirs=dirs, num_hospitals=3), {"num_hospitals"}
  )
  assert given.data.num_hospitals == 3


def test_what_the_data_config_refutes_is_refused_by_the_mapping():
  with pytest.raises(ValueError, match="min_surviving_hospitals=5 exceeds the 4"):
    flags_lib.run_configs(_values(min_surviving_hospitals=5), set())
  with pytest.raises(ValueError, match="cannot parse 'x'"):
    flags_lib.run_configs(_values(dropout_schedule="x"), set())


def test_a_hyper_parameter_this_setting_ignores_is_named_in_a_warning():
  cfgs = flags_lib.run_configs(_values(batch_size=16), {"batch_size"})
  assert cfgs.warnings == (
    "--batch_size has no effect with --setting=fscdp (it applies to c, f, fpdp and cdp with "
    "--cdp_impl=tf_privacy)",
  )
  quiet = flags_lib.run_configs(_values(setting="f", batch_size=16), {"setting", "batch_size"})
  assert quiet.warnings == ()


def test_a_bare_command_runs_the_recipe_of_its_setting():
  """Issue 22: unset hyper-parameter flags come from the setting's preset run."""
  unset = dict.fromkeys(flags_lib.RECIPE_FIELDS)
  cpu, paper = presets.get("cpu"), presets.get("paper")
  for setting in configs.SETTINGS:
    cfgs = flags_lib.run_configs(_values(dataset="synthetic", setting=setting, **unset), set())
    recipe = cpu.settings[setting]
    for name in flags_lib.RECIPE_FIELDS:
      assert getattr(cfgs.train, name) == getattr(recipe, name), (setting, name)
    assert cfgs.data.image_size == cpu.data.image_size == 32
    assert cfgs.recipe_name == f"cpu preset, setting {setting}"
  # A flag given wins; the recipe fills only the rest; real data get the paper's recipe.
  cfgs = flags_lib.run_configs(
    _values(dataset="aptos", data_dir="/d", **dict(unset, learning_rate=0.5)), {"data_dir"}
  )
  assert cfgs.train.learning_rate == 0.5 and "learning_rate" not in cfgs.recipe
  assert cfgs.train.sampling_prob == paper.settings["fscdp"].sampling_prob == 0.03425
  assert cfgs.train.rounds == paper.settings["fscdp"].rounds and cfgs.data.image_size == 224
  # Only what acts is reported (C has no noise); TF Privacy counts epochs.
  c = flags_lib.run_configs(_values(setting="c", **unset), set())
  assert "noise_multiplier" not in c.recipe and c.recipe["batch_size"] == 64
  tfp = flags_lib.run_configs(_values(setting="cdp", cdp_impl="tf_privacy", **unset), set())
  assert tfp.train.rounds == 20  # the recipe's 200 steps at q = 0.1
  assert tfp.train.batch_size == 240  # its expected batch: 0.1 of 2400 training images


def test_fscdp_defaults_to_masked_sums_and_the_others_to_none():
  """An unset --secure_aggregation is SecAgg for Dopamine (SecAgg+ from K=33), as in Python."""

  def mode(cfgs):
    return cfgs.train.secure_aggregation_for(cfgs.data.num_hospitals)

  unset = {"secure_aggregation": None}
  assert mode(flags_lib.run_configs(_values(**unset), set())) == "secagg"
  many = _values(num_hospitals=flags_lib.SECAGG_PLUS_FROM, num_examples=400, **unset)
  assert mode(flags_lib.run_configs(many, set())) == "secagg_plus"
  for setting in ("c", "cdp", "f", "fpdp"):
    cfgs = flags_lib.run_configs(_values(setting=setting, **unset), set())
    assert mode(cfgs) == "none", setting
  given = flags_lib.run_configs(_values(secure_aggregation="none"), {"secure_aggregation"})
  assert mode(given) == "none"


def test_a_config_built_in_python_gets_the_command_line_default():
  """The default is decided once, in TrainConfig: loop.run's callers get SecAgg too."""
  cfg = configs.TrainConfig(setting="fscdp")
  assert cfg.secure_aggregation_for(10) == "secagg"
  assert cfg.secagg_config(10).mode == "secagg"
  assert cfg.secagg_config(configs.SECAGG_PLUS_FROM).mode == "secagg_plus"
  assert cfg.secagg_config(1) is None  # one hospital: nothing to hide its update among
  assert configs.TrainConfig(setting="cdp").secagg_config(10) is None
  assert configs.TrainConfig(setting="fscdp", secure_aggregation="none").secagg_config(10) is None


def test_resume_takes_the_recorded_values_and_names_each_change():
  values = {"rounds": None, "target_epsilon": None, "eval_every": None, "seed": 0}
  values.update(resume=True, output_dir="/x", noise_multiplier=None)
  recorded = {"rounds": 40, "target_epsilon": 5.0, "eval_every": 3, "seed": 7}
  recorded.update(noise_multiplier=1.0, resume=False, output_dir="/y", data={"k": 1})
  merged, present, changes = flags_lib.resumed_values(values, {"resume"}, recorded)
  # A bare --resume: every recorded value, not the recipe's or the flag's default.
  assert merged["target_epsilon"] == 5.0 and merged["rounds"] == 40 and merged["seed"] == 7
  assert merged["noise_multiplier"] == 1.0 and changes == []
  # How this start acts is never inherited; keys that are not flags are ignored.
  assert merged["resume"] is True and merged["output_dir"] == "/x" and "data" not in merged
  assert {"rounds", "target_epsilon", "seed", "noise_multiplier"} <= present
  given = {**values, "target_epsilon": 8.0, "rounds": 60}
  _, _, changes = flags_lib.resumed_values(given, {"target_epsilon", "rounds"}, recorded)
  assert changes[0] == "--rounds 40 -> 60"
  assert changes[1].startswith("--target_epsilon 5.0 -> 8.0 (the budget is raised")
  lower = {**values, "target_epsilon": 3.0}
  _, _, changes = flags_lib.resumed_values(lower, {"target_epsilon"}, recorded)
  assert changes == ["--target_epsilon 5.0 -> 3.0 (the budget is lowered)"]
