"""Figure 1 from run directories (the tables: dopamine_tff/results_tables.py).

A results root holds ``<setting>/seed_<n>/`` run directories written by the
training loop (metrics.csv, summary.json). The figures are the paper's
Figure 1 panels: test accuracy against epochs, epsilon against epochs (private
settings), and test accuracy against epsilon, each as PNG and PDF.

Figure rules: every setting has one colour, marker and line style in every
figure and run (STYLES; Okabe-Ito colours, readable in grey and by colour-blind
readers); curves that coincide stay visible (CDP dashed over FSCDP's wider
solid line); the band is the standard deviation over seeds with ddof=1, the
same as the tables, and the legend says so with n; the accuracy panels draw
the test set's majority-class rate; curves start at round 0 (the starting
weights, epsilon 0) where the runs evaluated it; the legend sits below the
axes; the accuracy-against-epsilon panel marks the paper's published points
(PAPER_POINTS) for reference, those far beyond our epsilons on a broken axis.
"""

from __future__ import annotations

import os

import numpy as np

from dopamine_tff import results_tables

ORDER = results_tables.ORDER
LABELS = results_tables.LABELS

# setting -> (colour, marker, line style, line width, z-order)
STYLES = {
  "c": ("#000000", "o", "-", 1.6, 3),
  "cdp": ("#0072B2", "s", "--", 1.6, 5),
  "f": ("#009E73", "^", ":", 1.8, 3),
  "fpdp": ("#E69F00", "v", "-.", 1.6, 3),
  "fscdp": ("#D55E00", "D", "-", 3.0, 4),
}
# Figure 1 of Malekzadeh et al. (read off the plots; ../shared/DOPAMINE.md):
# setting -> (epsilon at 100 epochs, test accuracy), APTOS at 224x224.
PAPER_POINTS = {"cdp": (9.1, 0.744), "fpdp": (19.0, 0.734), "fscdp": (10.8, 0.7425)}


# Settings whose markers are hollow: CDP's curve coincides with FSCDP's in
# epsilon (the same accountant and steps), and filled squares drawn over it
# hid FSCDP's diamonds (issue 22).
HOLLOW = ("cdp",)


def style(setting: str) -> dict:
  """Matplotlib keyword arguments of a setting's line (fixed across figures)."""
  colour, marker, line, width, z = STYLES.get(setting, ("#CC79A7", "x", "-", 1.5, 2))
  kw = dict(color=colour, marker=marker, linestyle=line, linewidth=width, zorder=z)
  if setting in HOLLOW:
    kw.update(markerfacecolor="none", markeredgewidth=1.4)
  return kw


def _curves(group: list[dict], x_key: str, y_key: str):
  """x, mean and std (ddof=1; 0 for one run) of y over seeds where y was evaluated."""
  series = []
  for run in group:
    m = run["metrics"]
    if y_key not in m:  # e.g. kappa in a run from before it was measured
      series.append((np.array([]), np.array([])))
      continue
    ok = np.isfinite(m[y_key]) & np.isfinite(m[x_key])
    series.append((m[x_key][ok], m[y_key][ok]))
  n = min((len(x) for x, _ in series), default=0)
  if n == 0:
    return None
  x = np.mean([s[0][:n] for s in series], axis=0)
  ys = np.array([s[1][:n] for s in series])
  std = ys.std(axis=0, ddof=1) if len(ys) > 1 else np.zeros(n)
  return x, ys.mean(axis=0), std


PANELS = (
  ("accuracy_vs_epochs", "epochs", "test_accuracy", "epochs", "test accuracy", False),
  ("epsilon_vs_epochs", "epochs", "epsilon", "epochs", "epsilon", True),
  ("accuracy_vs_epsilon", "epsilon", "test_accuracy", "epsilon", "test accuracy", True),
  ("kappa_vs_epsilon", "epsilon", "kappa", "epsilon", "quadratic weighted kappa", True),
)


def _band_note(runs) -> str:
  counts = sorted({len(g) for g in runs.values()})
  if counts == [1]:
    seeds = sorted({g[0]["summary"].get("seed", 0) for g in runs.values()})
    return "one run per setting (no band)" + (f", seed {seeds[0]}" if len(seeds) == 1 else "")
  n = counts[0] if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
  return f"lines: mean over n={n} seeds; bands: ± 1 std (ddof=1)"


def _plot_runs(ax, runs, x_key, y_key, private_only) -> list:
  """One curve per setting (mean over seeds, a band of one std); their (x, low, high)."""
  extents = []
  for setting, group in runs.items():
    if private_only and group[0]["summary"]["epsilon"] is None:
      continue
    curve = _curves(group, x_key, y_key)
    if curve is None:
      continue
    x, mean, std = curve
    kw = style(setting)
    every = max(1, len(x) // 8)
    offset = (ORDER.index(setting) if setting in ORDER else 0) * every // len(ORDER)
    ax.plot(
      x,
      mean,
      label=f"{LABELS.get(setting, setting)} (n={len(group)})",
      markevery=(offset, every),  # staggered: coinciding curves keep their own markers
      markersize=5,
      **kw,
    )
    if len(group) > 1:
      ax.fill_between(x, mean - std, mean + std, color=kw["color"], alpha=0.15, linewidth=0)
    extents.append((x, mean - std, mean + std))
  return extents


def _limits(extents, ys=(), pad: float = 0.05):
  """Padded axis limits around the runs' (x, lower, upper) extents and extra y values."""
  x = np.concatenate([e[0] for e in extents])
  y = np.concatenate([e[1] for e in extents] + [e[2] for e in extents] + [np.asarray(ys, float)])
  x, y = x[np.isfinite(x)], y[np.isfinite(y)]
  (x0, x1), (y0, y1) = (x.min(), x.max()), (y.min(), y.max())
  dx, dy = (x1 - x0) or 1.0, (y1 - y0) or 0.1
  return (x0 - pad * dx, x1 + pad * dx), (y0 - pad * dy, y1 + pad * dy)


# A paper point further beyond our epsilon range than this share of the range
# goes to the broken axis's side panel instead of stretching the main axes.
NEAR = 0.2


def _split_paper_points(x_limits) -> tuple[dict, dict]:
  """The paper's points near our epsilon range (main axes) and far from it (side panel)."""
  x0, x1 = x_limits
  reach = NEAR * (x1 - x0)
  near = {s: p for s, p in PAPER_POINTS.items() if x0 - reach <= p[0] <= x1 + reach}
  return near, {s: p for s, p in PAPER_POINTS.items() if s not in near}


def _plot_paper_points(ax, points: dict) -> None:
  """The paper's published (epsilon, accuracy) points, as hollow markers."""
  for setting, (eps, acc) in points.items():
    kw = style(setting)
    ax.plot(
      [eps],
      [acc],
      linestyle="none",
      marker=kw["marker"],
      markersize=9,
      markerfacecolor="none",
      markeredgecolor=kw["color"],
      markeredgewidth=1.8,
      zorder=6,
      label=f"paper: {setting.upper()} (APTOS, 100 epochs; eps {eps:g})",
    )


def _side_panel(fig, ax, far: dict):
  """A broken epsilon axis: a narrow panel right of `ax`, sharing its accuracy axis,
  holding the paper's points far beyond our epsilons (issue 22: at epsilon 19 the
  FPDP point stretched the axis and crushed our curves)."""
  box = ax.get_position()
  side = fig.add_axes([box.x1 + 0.02, box.y0, 0.09, box.height], sharey=ax)
  _plot_paper_points(side, far)
  xs = [p[0] for p in far.values()]
  side.set_xlim(min(xs) - 1.0, max(xs) + 1.0)
  side.set_xticks(sorted(set(xs)))
  side.tick_params(labelleft=False, left=False)
  side.spines["left"].set_visible(False)
  ax.spines["right"].set_visible(False)
  side.grid(alpha=0.3)
  mark = dict(marker=[(-1, -1.5), (1, 1.5)], markersize=10, linestyle="none", color="k",
              mec="k", mew=1, clip_on=False)  # fmt: skip
  ax.plot([1, 1], [0, 1], transform=ax.transAxes, **mark)
  side.plot([0, 0], [0, 1], transform=side.transAxes, **mark)
  return side


def figure(runs: dict[str, list[dict]], panel: str, title: str = ""):
  """One Figure-1 panel as a matplotlib figure (the caller saves and closes it).

  The legend sits below the axes, so it never covers a curve; in the
  accuracy-against-epsilon panel the axes fit our runs, and the paper's points
  far beyond them sit on a broken axis to the right.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  name, x_key, y_key, x_label, y_label, private_only = next(p for p in PANELS if p[0] == panel)
  majority = [r["summary"].get("majority_class_accuracy") for g in runs.values() for r in g]
  majority = [m for m in majority if m is not None]
  deltas = {r["summary"].get("delta") for g in runs.values() for r in g} - {None}
  eps_label = f"epsilon (delta = {deltas.pop():g})" if len(deltas) == 1 else "epsilon"
  fig = plt.figure(figsize=(7.0, 5.6))
  ax = fig.add_axes([0.1, 0.33, 0.74, 0.6])
  extents = _plot_runs(ax, runs, x_key, y_key, private_only)
  rate = float(np.mean(majority)) if majority and y_key == "test_accuracy" else None
  if rate is not None:
    ax.axhline(
      rate,
      color="#777777",
      linestyle=(0, (1, 3)),
      linewidth=1.2,
      label=f"majority class ({100 * rate:.1f} %)",
    )
  axes = [ax]
  if name == "accuracy_vs_epsilon" and extents:
    near, far = _split_paper_points(_limits(extents)[0])
    shown = [*(p[1] for p in PAPER_POINTS.values()), *([rate] if rate is not None else [])]
    near_xy = np.array(list(near.values()) or [[np.nan, np.nan]]).T
    (x0, x1), (y0, y1) = _limits([*extents, (near_xy[0], near_xy[1], near_xy[1])], shown)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    _plot_paper_points(ax, near)
    if far:
      axes.append(_side_panel(fig, ax, far))
  ax.set_xlabel(eps_label if x_key == "epsilon" else x_label)
  ax.set_ylabel(eps_label if y_key == "epsilon" else y_label)
  ax.set_title(title or "dopamine_tff", fontsize=10)
  ax.grid(alpha=0.3)
  _legend_below(fig, axes, _band_note(runs))
  return fig


def _legend_below(fig, axes, title: str) -> None:
  """One legend for every axis' curves, below the axes (it never covers a curve)."""
  handles, labels = [], []
  for a in axes:
    h, lab = a.get_legend_handles_labels()
    handles += h
    labels += lab
  fig.legend(
    handles,
    labels,
    fontsize=7,
    title=title,
    title_fontsize=7,
    loc="upper center",
    bbox_to_anchor=(0.5, 0.22),
    ncol=2,
    frameon=False,
  )


def draw_figures(runs: dict[str, list[dict]], out_dir: str, title: str = "") -> list[str]:
  """Draws the three Figure-1 panels as PNG and PDF; returns the paths."""

  paths = []
  for name, _, y_key, *_ in PANELS:
    if not any(
      np.isfinite(r["metrics"].get(y_key, [np.nan])).any() for g in runs.values() for r in g
    ):
      continue  # e.g. kappa on data that are not DR grades
    paths += save(figure(runs, name, title), out_dir, name)
  return paths


def save(fig, out_dir: str, name: str) -> list[str]:
  """Saves `fig` as <name>.png and .pdf in `out_dir`, closes it; returns the paths."""
  import matplotlib.pyplot as plt

  paths = []
  for ext in ("png", "pdf"):
    path = os.path.join(out_dir, f"{name}.{ext}")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    paths.append(path)
  plt.close(fig)
  return paths
