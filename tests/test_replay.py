"""Replay ordering and pacing (pure), without a broker."""

from __future__ import annotations

import pandas as pd

from streaming.replay import ReplayConfig, interactions_to_events, paced


def test_events_come_in_timestamp_order_with_stable_ids():
    frame = pd.DataFrame({"user_id": ["2", "1", "1"], "item_id": ["5", "6", "7"],
                          "timestamp": [20, 10, 20], "rating": [3.0, 4.0, 5.0]})
    events = interactions_to_events(frame)
    assert [e.item_id for e in events] == ["6", "5", "7"]
    assert events[0].event_id == "1-6-10" and events[0].ts == 10_000 and events[0].value == 4.0
    assert interactions_to_events(frame, limit=1) == events[:1]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_fixed_rate_pacing():
    clock = FakeClock()
    events = interactions_to_events(pd.DataFrame({"user_id": ["1"] * 5, "item_id": list("abcde"),
                                                  "timestamp": range(5), "rating": [1.0] * 5}))
    times = []
    for _ in paced(events, ReplayConfig(rate=100.0), clock, clock.sleep):
        times.append(round(clock.now, 6))
    assert times == [0.0, 0.01, 0.02, 0.03, 0.04]


def test_speedup_follows_the_data_clock():
    clock = FakeClock()
    events = interactions_to_events(pd.DataFrame({"user_id": ["1"] * 3, "item_id": list("abc"),
                                                  "timestamp": [0, 60, 180], "rating": [1.0] * 3}))
    times = [round(clock.now, 6) for _ in paced(events, ReplayConfig(rate=None, speedup=60.0), clock, clock.sleep)]
    assert times == [0.0, 1.0, 3.0]
