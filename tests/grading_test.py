"""The DR grading metrics (dopamine_tff/grading.py), against scikit-learn and by hand."""

import numpy as np
from sklearn import metrics

from dopamine_tff import grading


def _probs(pred, classes=5, confidence=0.8):
  p = np.full((len(pred), classes), (1 - confidence) / (classes - 1))
  p[np.arange(len(pred)), pred] = confidence
  return p


def test_perfect_grading_scores_one_everywhere():
  labels = np.repeat(np.arange(5), 20)
  m = grading.grade_metrics(_probs(labels), labels, dr=True)
  for key in grading.SCALARS:
    assert m[key] == 1.0, key
  assert m["recall"] == [1.0] * 5
  assert np.array_equal(m["confusion_matrix"], np.diag([20] * 5))


def test_kappa_weighs_a_far_miss_more_than_a_near_one():
  labels = np.repeat(np.arange(5), 10)
  near, far = labels.copy(), labels.copy()
  near[labels == 4], far[labels == 4] = 3, 0  # proliferative called severe, or no DR
  k_near = grading.grade_metrics(_probs(near), labels, dr=True)["kappa"]
  k_far = grading.grade_metrics(_probs(far), labels, dr=True)["kappa"]
  assert k_near > k_far
  assert k_far == metrics.cohen_kappa_score(labels, far, weights="quadratic")
  # Top-1 accuracy cannot tell the two apart.
  assert np.mean(near == labels) == np.mean(far == labels)


def test_referable_dr_is_grade_two_or_worse_from_the_softmax_mass():
  labels = np.array([0, 1, 2, 3, 4, 0, 1, 2])
  pred = np.array([0, 2, 2, 1, 4, 0, 1, 0])  # one false referral, two missed referrals
  m = grading.grade_metrics(_probs(pred), labels, dr=True)
  assert m["referable_sensitivity"] == 2 / 4 and m["referable_specificity"] == 3 / 4
  scores = _probs(pred)[:, 2:].sum(axis=1)
  assert m["referable_auc"] == metrics.roc_auc_score(labels >= 2, scores)


def test_the_ninety_percent_threshold_is_never_chosen_on_the_half_it_is_measured_on():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 2000)
  logits = rng.normal(size=(2000, 5))
  logits[np.arange(2000), labels] += 1.0
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  m = grading.grade_metrics(probs, labels, dr=True, seed=3)
  # Cross-fitted: close to the 90 % target, but not exactly tuned to it.
  assert 0.85 < m["referable_sensitivity_at90"] < 0.95
  scores, referable = probs[:, 2:].sum(axis=1), labels >= 2
  cut = grading.threshold_for_sensitivity(scores, referable)
  assert np.mean(scores[referable] >= cut) >= 0.9  # in-sample: the largest that reaches 90 %
  assert np.mean(scores[referable] >= np.nextafter(cut, 2.0)) < 0.9


def test_digits_get_balanced_accuracy_and_per_class_recall_only():
  labels = np.repeat(np.arange(10), 3)
  pred = labels.copy()
  pred[:3] = 1  # class 0 never recognised
  m = grading.grade_metrics(_probs(pred, classes=10), labels, dr=False)
  assert m["recall"][0] == 0.0 and m["recall"][1] == 1.0
  assert m["balanced_accuracy"] == metrics.balanced_accuracy_score(labels, pred) == 0.9
  assert all(np.isnan(m[k]) for k in grading.SCALARS if k != "balanced_accuracy")
  assert not grading.is_dr("digits", 10) and grading.is_dr("aptos", 5)
  assert grading.is_dr("synthetic (validation split)", 5)
