"""One FSCDP round under secure aggregation: masked round, unmasking, server step.

Runs a ``MaskedDpSgd`` (TFF, dopamine_tff/process.py) or its in-process twin
(dopamine_tff/inprocess.py) around the protocol's phases
(dopamine_tff/secagg/protocol.py). Has the ``initialize()`` / ``next()``
shape of the other processes, with the round's senders and responders.
"""

from __future__ import annotations

import time

import numpy as np

from dopamine_tff.secagg import protocol as protocol_lib


class SecureDpSgd:
  """Dopamine's round with masks; ``next`` raises RoundAborted below threshold."""

  def __init__(self, computations, protocol: protocol_lib.Protocol):
    self.computations = computations
    self.protocol = protocol

  def initialize(self):
    return self.computations.initialize()

  def next(
    self,
    state,
    datasets,
    keys,
    dither_keys,
    dither_signs,
    correction,
    *,
    round_num,
    senders,
    responders,
  ):
    """Runs round `round_num` for the hospitals `senders` (their data, keys in order).

    The dither inputs are those of the plain process (dopamine_tff/process.py).
    """
    proto = self.protocol
    proto.start_round(round_num)
    inputs = [proto.client_inputs(h) for h in senders]
    t0 = time.monotonic()
    masked_sum, examples, clipped = self.computations.masked_round(
      state, datasets, keys, dither_keys, dither_signs, *[[x[i] for x in inputs] for i in range(3)]
    )
    t1 = time.monotonic()
    code_sum, stats = proto.unmask(
      np.asarray(masked_sum, np.int64), senders=senders, responders=responders
    )
    t2 = time.monotonic()
    new_state = self.computations.server_update(state, code_sum, correction, int(examples))
    measurements = {
      "secure_clipped_count": int(clipped),
      "secure_summands": len(senders),
      "secagg_masked_round_s": t1 - t0,
      "secagg_unmask_s": t2 - t1,
      **stats,
    }
    return new_state, measurements
