"""How a diabetic-retinopathy model is judged, beside top-1 accuracy.

All metrics come from scikit-learn (no hand-written formulas):

* quadratic weighted kappa (``cohen_kappa_score(weights="quadratic")``): the
  APTOS 2019 and EyePACS score; grades are ordered, so calling a
  proliferative eye "mild" costs more than calling it "severe";
* referable DR (grade >= 2, moderate or worse), the screening decision:
  ROC AUC of the softmax mass on grades 2-4 (``roc_auc_score``), and
  sensitivity and specificity at two operating points: the argmax grade, and
  the threshold that gives 90 % sensitivity. That threshold is chosen on one
  half of the evaluated split and applied to the other (two-fold
  cross-fitting, halves drawn from the run's public seed), so the reported
  pair is never tuned on the examples it is measured on;
* per-grade recall and the confusion matrix (``confusion_matrix``), and
  balanced accuracy (``balanced_accuracy_score``): DP-SGD loses the rare
  grades first (Bagdasaryan et al., NeurIPS 2019), and severe and
  proliferative DR are the grades screening exists to catch.

For data that are not DR grades (digits) only balanced accuracy, per-class
recall and the confusion matrix apply. No TensorFlow here.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics

DR_DATASETS = ("synthetic", "synthetic_public", "aptos", "eyepacs")
REFERABLE_FROM = 2  # grade 2 (moderate) or worse is referred to a specialist
TARGET_SENSITIVITY = 0.9

# The scalars every evaluation writes to metrics.csv (NaN where they do not apply).
SCALARS = (
  "balanced_accuracy",
  "kappa",
  "referable_auc",
  "referable_sensitivity",
  "referable_specificity",
  "referable_sensitivity_at90",
  "referable_specificity_at90",
)


def is_dr(dataset: str, num_classes: int) -> bool:
  """Whether labels are the five DR grades 0-4."""
  return num_classes == 5 and dataset.split(" ")[0] in DR_DATASETS


def _rates(referable: np.ndarray, called: np.ndarray) -> tuple[float, float]:
  """(sensitivity, specificity) of calling `called` against the truth `referable`."""
  tn, fp, fn, tp = metrics.confusion_matrix(referable, called, labels=[False, True]).ravel()
  sens = tp / (tp + fn) if tp + fn else float("nan")
  spec = tn / (tn + fp) if tn + fp else float("nan")
  return float(sens), float(spec)


def threshold_for_sensitivity(scores, referable, target: float = TARGET_SENSITIVITY) -> float:
  """The largest score threshold whose sensitivity on (scores, referable) is >= target."""
  fpr, tpr, thresholds = metrics.roc_curve(referable, scores, drop_intermediate=False)
  del fpr
  ok = np.flatnonzero(tpr >= target)
  return float(thresholds[ok[0]]) if ok.size else float("-inf")


def _cross_fitted(scores, referable, seed: int) -> tuple[float, float]:
  """Sensitivity and specificity at the 90 %-sensitivity threshold, each half
  of the split judged at the threshold the other half chose."""
  half = np.random.default_rng(seed + 90).permutation(len(scores)) % 2 == 0
  called = np.zeros(len(scores), bool)
  for own in (half, ~half):
    other = ~own
    if referable[other].all() or not referable[other].any():
      return float("nan"), float("nan")  # a half without both kinds: no threshold
    cut = threshold_for_sensitivity(scores[other], referable[other])
    called[own] = scores[own] >= cut
  return _rates(referable, called)


def grade_metrics(probs: np.ndarray, labels: np.ndarray, dr: bool, seed: int = 0) -> dict:
  """Every metric of one evaluation.

  Args:
    probs: float [N, C], the model's softmax.
    labels: int [N], the true classes (DR grades 0-4 when `dr`).
    dr: whether the classes are DR grades.
    seed: the run's public seed (the cross-fitting halves).

  Returns:
    The SCALARS (NaN where they do not apply), ``recall`` (per class) and
    ``confusion_matrix`` (rows: true class, columns: predicted).
  """
  classes = list(range(probs.shape[1]))
  pred = np.argmax(probs, axis=1)
  confusion = metrics.confusion_matrix(labels, pred, labels=classes)
  recall = metrics.recall_score(
    labels, pred, labels=classes, average=None, zero_division=np.nan
  ).tolist()
  out = dict.fromkeys(SCALARS, float("nan"))
  out["balanced_accuracy"] = float(metrics.balanced_accuracy_score(labels, pred))
  if dr:
    out["kappa"] = float(metrics.cohen_kappa_score(labels, pred, weights="quadratic"))
    referable = labels >= REFERABLE_FROM
    scores = probs[:, REFERABLE_FROM:].sum(axis=1)
    if referable.any() and not referable.all():
      out["referable_auc"] = float(metrics.roc_auc_score(referable, scores))
      out["referable_sensitivity_at90"], out["referable_specificity_at90"] = _cross_fitted(
        scores, referable, seed
      )
    out["referable_sensitivity"], out["referable_specificity"] = _rates(
      referable, pred >= REFERABLE_FROM
    )
  return {**out, "recall": recall, "confusion_matrix": confusion.tolist()}
