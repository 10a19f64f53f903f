"""One FSCDP round under secure aggregation: masked round, unmasking, server step.

Runs a ``MaskedDpSgd`` (TFF, dopamine_tff/process.py) or its in-process twin
(dopamine_tff/inprocess.py) around the protocol's phases
(dopamine_tff/secagg/protocol.py). Has the ``initialize()`` / ``run()``
shape of the other round objects (``run(state, tf_rounds.RoundInputs)``,
with the round's senders and responders).

Every round starts a fresh protocol instance (keys, shares, graph); the pair
dithers come from the same per-round agreements, and the server's correction
for a dropped hospital's dithers from its revealed private key only.
"""

from __future__ import annotations

from collections.abc import Callable
import time

import numpy as np

from dopamine_tff import quantization
from dopamine_tff import tf_rounds
from dopamine_tff.secagg import masking
from dopamine_tff.secagg import protocol as protocol_lib


class SecureDpSgd:
  """Dopamine's round with masks; ``run`` raises RoundAborted (nothing released)."""

  def __init__(
    self,
    computations,
    protocol: protocol_lib.Protocol,
    correction_fn: Callable,
    handoff=None,
  ):
    """
    Args:
      computations: the masked round and server step.
      protocol: the run's protocol (a fresh instance per round).
      correction_fn: (list of (uint32[8] dither key, sign)) -> float64 [n], the
        dithers still in the sum (dopamine_tff/dither.py).
      handoff: a handoff.Handoff when the masks and dithers reach the workers
        as files (the computations then take paths).
    """
    self.handoff = handoff
    self.computations = computations
    self.protocol = protocol
    self.correction_fn = correction_fn

  def initialize(self):
    return self.computations.initialize()

  def run(self, state, inputs):
    """Runs round `inputs.round_num` for the hospitals `inputs.senders`.

    Args:
      state: the server state.
      inputs: a tf_rounds.RoundInputs: the senders' data and keys (in
        `senders` order), the round and the responders to the unmasking.
    """
    round_num, senders, responders = inputs.round_num, list(inputs.senders), inputs.responders
    datasets, keys = inputs.datasets, inputs.keys
    proto = self.protocol
    proto.start_round(round_num)
    # Cheap abort before any computation: the same check guards the unmasking.
    protocol_lib.check_hidden(proto.graph, senders, proto.cfg.corrupted_holders)
    protocol_lib.check_hidden(proto.dither_graph, senders, proto.cfg.colluders)
    num_words = int(sum(np.size(w) for w in tf_rounds.as_server_state(state).weights))
    t0 = time.monotonic()
    # Each hospital's pair dither (its host, OpenSSL ChaCha20, from the
    # agreements' dither keys): data-independent, ready before its DP step.
    dithers = [quantization.host_dither(*proto.dither_inputs(h), num_words) for h in senders]
    td = time.monotonic()
    # Each hospital's mask, made on its host from this round's keys (OpenSSL
    # ChaCha20): data-independent, so it is ready before its DP step.
    masks = [masking.host_mask(num_words, *proto.client_inputs(h), proto.cfg.prg) for h in senders]
    tm = time.monotonic()
    try:
      if self.handoff is not None:
        dithers = [self.handoff.put(d) for d in dithers]
        masks = [self.handoff.put(m) for m in masks]
      masked_sum, examples, flagged = self.computations.masked_round(
        state, datasets, keys, dithers, masks
      )
    finally:
      if self.handoff is not None:
        self.handoff.clear()
    if int(flagged):
      raise protocol_lib.UpdateNotEncodable(
        "a hospital's update had a non-finite or out-of-range coordinate; the round is "
        "abandoned before unmasking"
      )
    t1 = time.monotonic()
    code_sum, stats = proto.unmask(
      np.asarray(masked_sum, np.int64), senders=senders, responders=responders
    )
    correction = self.correction_fn(stats.pop("lost_dithers"))
    t2 = time.monotonic()
    new_state = self.computations.server_update(state, code_sum, correction, int(examples))
    measurements = {
      "secure_clipped_count": 0,
      "secure_summands": len(senders),
      "dithers_s": td - t0,
      "secagg_masks_s": tm - td,
      "secagg_masked_round_s": t1 - tm,
      "secagg_unmask_s": t2 - t1,
      **stats,
    }
    return new_state, measurements
