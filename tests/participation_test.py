"""Host-side participation draws: public, seeded, shared by trainers and tuning."""

from dopamine_tff import configs
from dopamine_tff import participation


def test_dropouts_join_the_schedule_and_the_draws():
  cfg = configs.TrainConfig(setting="fscdp", dropout_schedule=((2, (1, 7)),), seed=1)
  assert participation.dropped(cfg, 0, 4) == set()
  assert participation.dropped(cfg, 1, 4) == {1}  # round 2 (1-based); 7 is beyond K
  drawn = configs.TrainConfig(setting="fscdp", dropout_prob=0.5, seed=1)
  rounds = [participation.dropped(drawn, r, 8) for r in range(50)]
  assert rounds == [participation.dropped(drawn, r, 8) for r in range(50)]  # seeded
  share = sum(len(d) for d in rounds) / (50 * 8)
  assert 0.35 < share < 0.65


def test_unmask_dropouts_are_senders_only():
  cfg = configs.TrainConfig(
    setting="fscdp", secure_aggregation="secagg", secagg_unmask_dropout_prob=0.5, seed=2
  )
  senders = (0, 2, 5)
  for r in range(20):
    assert participation.unmask_dropped(cfg, r, senders) <= set(senders)
  assert any(participation.unmask_dropped(cfg, r, senders) for r in range(20))
  off = configs.TrainConfig(setting="fscdp")
  assert participation.unmask_dropped(off, 0, senders) == set()


def test_selection_takes_the_fraction_and_changes_every_round():
  cfg = configs.TrainConfig(setting="fpdp", client_fraction=0.3, seed=3)
  picks = [participation.selected(cfg, r, 10) for r in range(10)]
  assert {len(p) for p in picks} == {3}
  assert all(p == sorted(set(p)) for p in picks)
  assert len({tuple(p) for p in picks}) > 1
  assert participation.selected(configs.TrainConfig(setting="c"), 0, 1) == [0]
