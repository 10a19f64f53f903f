"""The hospitals' pairing graphs and the check that a round keeps every update hidden.

Shared by the plain secure sum's pair dithers (dopamine_tff/dither.py) and
secure aggregation's masks (dopamine_tff/secagg/), so the plain path does not
import secagg/.

The complete graph for SecAgg; for SecAgg+ a Harary graph H(k, K) over a
fresh secret order every round (Bell et al. 2020).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from dopamine_tff import aborts


def neighbour_graph(cfg, order_seed: bytes = b"") -> dict[int, tuple[int, ...]]:
  """SecAgg's mask graph for a secagg.config.SecAggConfig `cfg`: complete, or a
  Harary graph of its even degree over the random order keyed by `order_seed`
  (32 secret bytes)."""
  return dither_graph(cfg.num_hospitals, cfg.degree, order_seed)


def dither_degree(k: int, colluders: int = 0) -> int:
  """Pair-dither partners per hospital: about log2 K (even), more than the
  colluders plus one, at most K - 1 (the complete graph).

  The finite-precision argument (dopamine_tff/quantization.py) needs the
  honest delivering hospitals' dither graph connected; a Harary graph of
  degree d is d-connected, so any d - 1 hospitals may drop or collude and it
  stays connected (a round whose graph does split is aborted before any
  release: check_hidden). Each partner costs a model-length stream a round.
  """
  if k <= 2:
    return k - 1
  wanted = max(2 * math.ceil(math.log2(k) / 2), colluders + 2)
  return min(wanted + wanted % 2, k - 1)


def dither_graph(k: int, degree: int, order_seed: bytes) -> dict[int, tuple[int, ...]]:
  """A pairing graph (the pair dithers', or SecAgg's masks'): complete at degree K - 1, else H(degree, K) over
  the order keyed by `order_seed` (with SecAgg+'s own order, a sub-graph of
  its neighbour graph of higher degree)."""
  if degree >= k - 1:
    return {i: tuple(j for j in range(k) if j != i) for i in range(k)}
  return harary_graph(k, degree, order_seed)


def ring_order(k: int, order_seed: bytes) -> np.ndarray:
  """The hospitals in the ring order of a Harary graph keyed by `order_seed`."""
  rng = np.random.default_rng(np.random.SeedSequence(int.from_bytes(order_seed or b"\0", "big")))
  return rng.permutation(k)


def harary_graph(k: int, degree: int, order_seed: bytes) -> dict[int, tuple[int, ...]]:
  """H(degree, k) over a random order: each hospital's degree/2 ring neighbours per side."""
  order = ring_order(k, order_seed)
  pos = {int(h): p for p, h in enumerate(order)}
  half = degree // 2
  graph = {}
  for i in range(k):
    near = {int(order[(pos[i] + d) % k]) for d in range(-half, half + 1) if d}
    graph[i] = tuple(sorted(near))
  return graph


def check_hidden(graph: dict, alive, colluders: int = 0, exact_limit: int = 20_000) -> None:
  """RoundAborted unless the delivering hospitals' graph hides every update.

  The server learns the sum of every connected component of the honest
  delivering hospitals (pair masks with dropped hospitals are removed, those
  with colluders known). So: each hospital must have more than `colluders`
  delivering neighbours, and the graph on `alive` must stay connected after
  removing any `colluders` of them (checked exactly while the subsets number
  at most `exact_limit`; beyond, the probabilistic bound of the parameters
  covers it).
  """
  alive = set(alive)
  if len(alive) <= 1:
    return
  for i in alive:
    live = sum(1 for j in graph[i] if j in alive)
    if live <= colluders:
      raise aborts.RoundAborted(
        f"hospital {i} has {live} delivering neighbours, not more than the "
        f"{colluders} assumed colluders: its update would be exposed"
      )

  def connected(nodes):
    if not nodes:
      return True
    start = min(nodes)
    seen, todo = {start}, [start]
    while todo:
      for j in graph[todo.pop()]:
        if j in nodes and j not in seen:
          seen.add(j)
          todo.append(j)
    return seen == nodes

  if not connected(alive):
    raise aborts.RoundAborted(
      "the delivering hospitals' graph is disconnected: a partial sum would be released"
    )
  if colluders and math.comb(len(alive), colluders) <= exact_limit:
    for removed in itertools.combinations(sorted(alive), colluders):
      if not connected(alive - set(removed)):
        raise aborts.RoundAborted(
          f"removing {colluders} hospital(s) {list(removed)} disconnects the delivering "
          "hospitals' graph: colluders could learn a partial sum"
        )
