"""Synthetic colour fundus photographs with the five diabetic-retinopathy grades.

The built-in data set: no download, deterministic from a seed. Every picture is
a fundus-like disc (orange-red background with vignetting, an optic disc, a
darker macula, vessels branching from the disc). The grade is shown by the
lesions human graders use (International Clinical DR scale):

* 0 No DR: none.
* 1 Mild: a few microaneurysms (tiny dark-red dots).
* 2 Moderate: more microaneurysms, dot/blot haemorrhages, some hard exudates.
* 3 Severe: many haemorrhages in every quadrant, many exudates, venous beading.
* 4 Proliferative: severe signs plus new vessels (fine tortuous vessels near the
  disc) and sometimes a pre-retinal haemorrhage.

Lesion counts of neighbouring grades overlap, lesions are small at low
resolution, illumination varies, and a fraction of labels is moved one grade
(grader disagreement), so the task is learnable but not trivial. Class priors
follow APTOS 2019 (1805/370/999/193/295 of 3662, about 49/10/27/5/8 %).
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 5
# APTOS 2019 class frequencies.
CLASS_PRIORS = np.array([1805, 370, 999, 193, 295], dtype=np.float64) / 3662.0
# Probability that the recorded grade differs by one from the drawn one.
GRADER_DISAGREEMENT = 0.08
# The built-in PUBLIC source (camera="public"): another camera and population,
# shifted the way EyePACS differs from APTOS. EyePACS 2015 train grades
# (25810/2443/5292/873/708 of 35126), noisier grading, and a camera with a
# cooler, darker, lower-contrast and slightly blurred picture.
PUBLIC_PRIORS = np.array([25810, 2443, 5292, 873, 708], dtype=np.float64) / 35126.0
PUBLIC_DISAGREEMENT = 0.15
PUBLIC_CAMERA = dict(gain=(0.86, 1.05, 1.3), gamma=1.3, contrast=0.8, blur=True)
CAMERAS = ("aptos", "public")


def _stamp_disc(img, cy, cx, radius, color, alpha=1.0, soft=True):
  """Blends a filled (soft-edged) disc of `color` into `img` in place."""
  size = img.shape[0]
  r = max(radius, 0.5)
  y0, y1 = int(max(cy - r - 2, 0)), int(min(cy + r + 3, size))
  x0, x1 = int(max(cx - r - 2, 0)), int(min(cx + r + 3, size))
  if y0 >= y1 or x0 >= x1:
    return
  yy, xx = np.mgrid[y0:y1, x0:x1]
  d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
  if soft:
    w = np.clip(r + 0.5 - d, 0.0, 1.0)
  else:
    w = (d <= r).astype(np.float64)
  w = (w * alpha)[..., None]
  img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - w) + np.asarray(color) * w


def _draw_path(img, points, width, color, alpha=1.0):
  """Draws a polyline by stamping discs along it."""
  for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
    n = int(max(abs(y1 - y0), abs(x1 - x0)) * 1.5) + 1
    for t in np.linspace(0.0, 1.0, n, endpoint=False):
      _stamp_disc(img, y0 + t * (y1 - y0), x0 + t * (x1 - x0), width, color, alpha)


def _vessel(rng, start, angle, length, size, tortuosity):
  points = [start]
  y, x = start
  step = size / 40.0
  for _ in range(int(length / step)):
    angle += rng.normal(0.0, tortuosity)
    y, x = y + step * np.sin(angle), x + step * np.cos(angle)
    points.append((y, x))
  return points


def _random_point_in_fundus(rng, centre, radius, inner=0.1, outer=0.85):
  rho = radius * np.sqrt(rng.uniform(inner**2, outer**2))
  phi = rng.uniform(0, 2 * np.pi)
  return centre + rho * np.sin(phi), centre + rho * np.cos(phi)


def _lesion_counts(rng, grade):
  """Numbers of each lesion kind; ranges of neighbouring grades overlap."""
  ma = [0, rng.integers(2, 7), rng.integers(4, 12), rng.integers(6, 16), rng.integers(4, 14)]
  haem = [0, rng.integers(0, 2), rng.integers(1, 6), rng.integers(7, 18), rng.integers(5, 16)]
  exud = [0, 0, rng.integers(0, 6), rng.integers(3, 12), rng.integers(2, 10)]
  newv = [0, 0, 0, rng.integers(0, 2), rng.integers(2, 5)]
  return ma[grade], haem[grade], exud[grade], newv[grade]


def render_fundus(rng: np.random.Generator, grade: int, size: int) -> np.ndarray:
  """Renders one fundus picture of the given grade, float32 in [0, 1], HxWx3."""
  c = (size - 1) / 2.0
  radius = size * rng.uniform(0.44, 0.49)
  yy, xx = np.mgrid[0:size, 0:size]
  d = np.sqrt((yy - c) ** 2 + (xx - c) ** 2) / radius
  base = np.array([0.78, 0.36, 0.16]) * rng.uniform(0.75, 1.15, size=3)
  vignette = np.clip(1.0 - 0.45 * d**2, 0.0, 1.0)[..., None]
  img = base * vignette * rng.uniform(0.8, 1.15)
  # Optic disc on the nasal side (left or right eye), macula at the centre.
  side = rng.choice([-1.0, 1.0])
  disc = (c + rng.normal(0, size * 0.02), c + side * radius * rng.uniform(0.45, 0.6))
  _stamp_disc(img, c, c, radius * 0.16, base * 0.45, alpha=0.5)
  vessel_color = np.array([0.45, 0.08, 0.05])
  for k in range(rng.integers(4, 7)):
    angle = np.pi * (k / 3.0) + rng.normal(0, 0.3) + (np.pi if side > 0 else 0)
    path = _vessel(rng, disc, angle, radius * rng.uniform(0.6, 1.1), size, 0.12)
    _draw_path(img, path, max(size / 160.0, 0.5), vessel_color, alpha=0.8)
  _stamp_disc(img, *disc, radius * 0.13, np.array([0.98, 0.88, 0.55]))
  ma, haem, exud, newv = _lesion_counts(rng, grade)
  lesion_size = size / 128.0
  for _ in range(ma):
    _stamp_disc(
      img,
      *_random_point_in_fundus(rng, c, radius),
      max(lesion_size, 0.6),
      np.array([0.35, 0.02, 0.02]),
    )
  for _ in range(haem):
    r = lesion_size * rng.uniform(2.0, 4.0)
    _stamp_disc(
      img, *_random_point_in_fundus(rng, c, radius), r, np.array([0.4, 0.03, 0.03]), alpha=0.9
    )
  for _ in range(exud):
    r = lesion_size * rng.uniform(0.8, 1.8)
    _stamp_disc(img, *_random_point_in_fundus(rng, c, radius), r, np.array([0.95, 0.85, 0.35]))
  for _ in range(newv):
    path = _vessel(rng, disc, rng.uniform(0, 2 * np.pi), radius * 0.35, size, 0.6)
    _draw_path(img, path, max(size / 300.0, 0.4), np.array([0.7, 0.1, 0.1]), alpha=0.9)
  if grade == 4 and rng.uniform() < 0.4:
    _stamp_disc(
      img,
      *_random_point_in_fundus(rng, c, radius, 0.2, 0.6),
      lesion_size * 8,
      np.array([0.42, 0.02, 0.02]),
      alpha=0.85,
    )
  img = img + rng.normal(0.0, 0.03, size=img.shape)
  img = img * (d <= 1.0)[..., None]  # black outside the fundus
  return np.clip(img, 0.0, 1.0).astype(np.float32)


def _public_camera(img: np.ndarray) -> np.ndarray:
  """The public source's camera: colour gain, exposure (gamma), contrast, a 3x3 blur."""
  cam = PUBLIC_CAMERA
  out = np.clip(img * np.asarray(cam["gain"]), 0.0, 1.0) ** cam["gamma"]
  mean = out.mean(axis=(0, 1), keepdims=True)
  out = mean + cam["contrast"] * (out - mean)
  if cam["blur"]:
    padded = np.pad(out, ((1, 1), (1, 1), (0, 0)), mode="edge")
    out = (
      sum(
        padded[dy : dy + out.shape[0], dx : dx + out.shape[1]] for dy in range(3) for dx in range(3)
      )
      / 9.0
    )
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def make_synthetic_retina(
  num_examples: int, *, image_size: int = 64, seed: int = 0, camera: str = "aptos"
) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images float32 [N,S,S,3] in [0,1], labels int32 [N]).

  ``camera="public"`` draws the built-in public source instead: EyePACS-like
  grades and camera (PUBLIC_*), from a random stream disjoint from every
  ``camera="aptos"`` seed's, so no private picture is ever one of its.

  Raises:
    ValueError: if num_examples < 1, image_size < 16 or camera is unknown.
  """
  if num_examples < 1:
    raise ValueError(f"num_examples must be >= 1, got {num_examples}")
  if image_size < 16:
    raise ValueError(f"image_size must be >= 16, got {image_size}")
  if camera not in CAMERAS:
    raise ValueError(f"camera must be one of {CAMERAS}, got {camera!r}")
  public = camera == "public"
  # The public stream is keyed apart: SeedSequence([seed, tag]) never equals a
  # plain integer seed's stream.
  rng = np.random.default_rng([seed, 0x5EED_0F_E7E] if public else seed)
  priors, disagreement = (
    (PUBLIC_PRIORS, PUBLIC_DISAGREEMENT) if public else (CLASS_PRIORS, GRADER_DISAGREEMENT)
  )
  grades = rng.choice(NUM_CLASSES, size=num_examples, p=priors)
  images = np.stack([render_fundus(rng, int(g), image_size) for g in grades])
  if public:
    images = np.stack([_public_camera(im) for im in images])
  shift = rng.uniform(size=num_examples) < disagreement
  step = np.where(rng.uniform(size=num_examples) < 0.5, -1, 1)
  labels = np.where(shift, np.clip(grades + step, 0, NUM_CLASSES - 1), grades)
  return images, labels.astype(np.int32)
