"""Per-round output sinks: metrics.csv and TensorBoard events.

The loop hands every round's row to each sink in a list (as dp_ftrl's metrics
managers and TFF's release managers do); a sink has ``write(row)`` and
``close()``.
"""

from __future__ import annotations

import csv
import math
import os

import tensorflow as tf

from dopamine_tff import grading
from dopamine_tff.program import durable

METRIC_FIELDS = (
  "round",
  "epochs",
  "train_loss",
  "test_accuracy",
  "test_loss",
  "epsilon",
  "epsilon_rdp",
  "epsilon_pld",
  "num_clients",
  "skipped",
  "secure_clipped",
  *grading.SCALARS,
  "round_time_s",
  "wall_time_s",
)


def _fmt(v):
  if isinstance(v, float):
    return "inf" if math.isinf(v) else ("" if math.isnan(v) else f"{v:.6g}")
  return v


class MetricsFile:
  """metrics.csv, appended and flushed every round; truncated on resume.

  Attributes:
    skipped: rounds so far (kept rows included) that released nothing.
  """

  def __init__(self, path: str, keep_through: int):
    rows = []
    if keep_through > 0 and os.path.isfile(path):
      with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("round") and int(r["round"]) <= keep_through]
    # Rounds that released nothing (aborted, or too few hospitals delivered).
    self.skipped = sum(int(r.get("skipped") or 0) for r in rows)
    tmp = path + ".tmp"
    with durable.writing(path, "metrics file", cleanup=tmp):
      with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
      os.replace(tmp, path)
    self.path = path
    self._file = open(path, "a", newline="")  # noqa: SIM115 (closed in close())
    # Rows carry more (per-class recall, the confusion matrix): TensorBoard and
    # summary.json take those.
    self._writer = csv.DictWriter(self._file, fieldnames=METRIC_FIELDS, extrasaction="ignore")

  def write(self, row: dict) -> None:
    """Appends one row whole, or (a full disk) none of it: WriteFailed."""
    end = self._file.tell()
    try:
      with durable.writing(self.path, "metrics file"):
        self._writer.writerow({k: _fmt(v) for k, v in row.items()})
        self._file.flush()
    except durable.WriteFailed:
      self._file = None  # its buffer holds the failed row: never flushed again
      os.truncate(self.path, end)  # no half row left for a resume to misread
      raise
    self.skipped += int(row.get("skipped", 0))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


class TensorBoardSink:
  """The row's finite scalars as TensorBoard events, step = round."""

  def __init__(self, directory: str):
    self.directory = directory
    self._writer = tf.summary.create_file_writer(directory)

  def write(self, row: dict) -> None:
    try:
      with self._writer.as_default():
        for key, value in row.items():
          if key != "round" and isinstance(value, int | float) and math.isfinite(value):
            tf.summary.scalar(key, value, step=row["round"])
      self._writer.flush()
    except tf.errors.OpError as e:  # TF reports a full disk as its own error
      raise durable.WriteFailed(
        f"cannot write the TensorBoard events in {self.directory}: {e.message}; the last "
        "complete checkpoint is intact: free space and rerun with --resume"
      ) from None

  def close(self) -> None:
    self._writer.close()
