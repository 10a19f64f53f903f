"""Empirical privacy audit: membership-inference attacks on the final model.

Uses TF Privacy's privacy_tests (package tensorflow-empirical-privacy): a
threshold attack and a logistic-regression attack try to tell training members
(the hospitals' pooled data) from held-out non-members (the test set) by the
model's loss and logits. Reported: attack AUC, attacker advantage and the
empirical epsilon lower bound (95 % confidence) that privacy_tests derives
from the attacks' true/false positive rates. A lower bound above the epsilon
we report would mean our accounting or our noise is wrong.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from dopamine_tff import dp_sgd


def _mia():
  # Imported lazily: the package pulls pandas and statsmodels.
  from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import data_structures
  from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import (
    membership_inference_attack,
  )

  return data_structures, membership_inference_attack


def attack_outputs(logits_in, logits_out, labels_in, labels_out, *, seed: int = 0) -> dict:
  """Runs the attacks on model outputs of members (in) and non-members (out)."""
  ds, mia = _mia()
  logits_in, logits_out = np.asarray(logits_in, np.float64), np.asarray(logits_out, np.float64)
  labels_in, labels_out = np.asarray(labels_in), np.asarray(labels_out)
  loss = lambda lg, lb: dp_sgd.loss_per_example(tf.constant(lg), tf.constant(lb)).numpy()  # noqa: E731
  data = ds.AttackInputData(
    logits_train=logits_in,
    logits_test=logits_out,
    loss_train=loss(logits_in, labels_in),
    loss_test=loss(logits_out, labels_out),
    labels_train=labels_in,
    labels_test=labels_out,
  )
  np.random.seed(seed)  # the logistic-regression attack's split uses numpy's global RNG
  results = mia.run_attacks(
    data,
    ds.SlicingSpec(entire_dataset=True, by_class=False),
    attack_types=(ds.AttackType.THRESHOLD_ATTACK, ds.AttackType.LOGISTIC_REGRESSION),
  )
  attacks = {}
  for r in results.single_attack_results:
    bounds = np.asarray(r.get_epsilon_lower_bound(), np.float64)
    attacks[str(r.attack_type.name).lower()] = {
      "auc": float(r.get_auc()),
      "advantage": float(r.get_attacker_advantage()),
      "epsilon_lower_bound": float(bounds.max()) if bounds.size else 0.0,
    }
  return {
    "attacks": attacks,
    "members": int(len(labels_in)),
    "non_members": int(len(labels_out)),
    "max_auc": max(a["auc"] for a in attacks.values()),
    "max_advantage": max(a["advantage"] for a in attacks.values()),
    "epsilon_lower_bound": max(a["epsilon_lower_bound"] for a in attacks.values()),
  }


def membership_audit(
  model: tf.keras.Model, weights, members, non_members, *, seed: int = 0
) -> dict:
  """Audits `weights` on equal-sized samples of members and non-members.

  Args:
    model: a Keras model of the right architecture (its weights are replaced).
    members, non_members: (images, labels) pairs.
  """
  dp_sgd.assign_weights(model, weights)
  n = min(len(members[1]), len(non_members[1]))
  if n < 10:
    raise ValueError(f"membership audit needs >= 10 members and non-members, got {n}")
  rng = np.random.default_rng(seed)
  pick_in = rng.permutation(len(members[1]))[:n]
  pick_out = rng.permutation(len(non_members[1]))[:n]

  def logits(x):
    return np.concatenate(
      [model(x[i : i + 512], training=False).numpy() for i in range(0, len(x), 512)]
    )

  result = attack_outputs(
    logits(members[0][pick_in]),
    logits(non_members[0][pick_out]),
    members[1][pick_in],
    non_members[1][pick_out],
    seed=seed,
  )
  assert math.isfinite(result["max_auc"])
  return result
