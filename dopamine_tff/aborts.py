"""Why a round releases nothing: the exceptions both secure sums raise.

The plain secure sum (dopamine_tff/dither.py) and secure aggregation
(dopamine_tff/secagg/) share them, so the plain path needs nothing of secagg/.
A trainer turns either into an unreleased round (RoundOutcome.released False):
nothing is applied and nothing is charged to the ledger.
"""


class RoundAborted(RuntimeError):
  """The round cannot be released safely: it releases nothing."""


class UpdateNotEncodable(RoundAborted):
  """A hospital's update had a non-finite or out-of-range coordinate: the round
  is abandoned (only this flag, never the count, leaves the hospitals)."""
