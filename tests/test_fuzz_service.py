"""Issue 18: fuzzing at the service level, in every protocol.

A service runs in this process; hypothesis draws batches of random and mutated messages
(of simulator output and of the real DECTRIS captures in ``tests/data``: header fields of
the wrong type or absurd sizes, flipped bits, cut, grown, dropped, repeated or swapped
parts, random bytes), made by :class:`livediff.bench.fuzz.Fuzzer`.  After each batch a
good series is sent, and :meth:`livediff.bench.fuzz_run.FuzzRun.check` must find nothing
wrong: the service runs, memory stayed bounded, ``sent = messages = bad + silent +
decoded``, every decoded event and every series is accounted for exactly, no frame was
dropped, none failed but for a payload corrupt inside good framing (its worker finds it), and
the good series gives the frames-table rows of a clean run.
About 5,000 messages in all; ``livediff bench --fuzz N`` runs longer.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from livediff.bench.fuzz import PROTOCOLS, Fuzzer, fixture_messages
from livediff.bench.fuzz_run import FuzzRun

DATA = Path(__file__).parent / "data"


@pytest.mark.timeout(110)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_service_survives_and_counts_exactly_whatever_arrives(protocol, tmp_path):
    fixtures = fixture_messages(protocol, DATA)
    with FuzzRun(protocol, tmp_path) as run:
        run.good_series(Fuzzer(protocol, 0))   # the clean reference

        # one service for every example, so no shrinking: a failing batch is reported as drawn
        @settings(max_examples=8, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(seed=st.integers(0, 2**32 - 1), size=st.integers(100, 300),
               mutated=st.floats(0.3, 0.9), garbage=st.floats(0.0, 0.2))
        def batch(seed, size, mutated, garbage):
            fuzzer = Fuzzer(protocol, seed, fixtures=fixtures)
            run.send(fuzzer.batch(size, mutated=mutated, garbage=garbage))
            assert run.check(run.good_series(fuzzer)) == []

        batch()
    assert run.sent > 800
