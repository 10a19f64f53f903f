"""Output sinks: metrics.csv survives a resume; TensorBoard gets finite scalars."""

import csv
import glob
import math

import tensorflow as tf

from dopamine_tff.program import outputs


def _row(r, skipped=0, acc=float("nan")):
  row = dict.fromkeys(outputs.METRIC_FIELDS, float("nan"))
  row.update(round=r, epochs=r / 10, epsilon=math.inf, skipped=skipped, test_accuracy=acc)
  return row


def test_metrics_file_keeps_rows_up_to_the_resumed_round(tmp_path):
  path = str(tmp_path / "metrics.csv")
  sink = outputs.MetricsFile(path, 0)
  for r in range(1, 6):
    sink.write(_row(r, skipped=int(r in (2, 4))))
  sink.close()
  assert sink.skipped == 2
  resumed = outputs.MetricsFile(path, 3)  # the checkpoint was at round 3
  assert resumed.skipped == 1
  resumed.write(_row(4))
  resumed.close()
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["round"] for r in rows] == ["1", "2", "3", "4"]
  assert rows[0]["epsilon"] == "inf" and rows[0]["test_accuracy"] == ""
  assert list(rows[0]) == list(outputs.METRIC_FIELDS)


def test_tensorboard_sink_writes_only_finite_scalars(tmp_path):
  sink = outputs.TensorBoardSink(str(tmp_path))
  sink.write(_row(1, acc=0.5))
  sink.close()
  tags = set()
  for f in glob.glob(str(tmp_path / "events.*")):
    for event in tf.compat.v1.train.summary_iterator(f):
      tags |= {v.tag for v in event.summary.value}
  assert "test_accuracy" in tags and "epochs" in tags
  assert "epsilon" not in tags and "test_loss" not in tags and "round" not in tags
