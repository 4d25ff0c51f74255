"""Packed latency histograms: they add up, and the p95 read from them lies within its bucket."""

from __future__ import annotations

import math
import random

import pytest

from usage import latency


def nearest_rank(values: list[int], fraction: float) -> int:
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)), 1) - 1]


def bucket_bounds(ms: int) -> tuple[int, float]:
    i = latency.bucket_of(ms)
    return (latency.BOUNDS[i - 1] if i else 0), (latency.BOUNDS[i] if i < len(latency.BOUNDS) else math.inf)


def test_buckets_are_ten_a_decade_from_one_millisecond_to_ten_minutes():
    assert latency.BOUNDS[:10] == (1, 2, 3, 4, 5, 6, 8, 10, 12, 15)
    assert latency.BOUNDS[-3:] == (400_000, 500_000, 600_000)
    assert list(latency.BOUNDS) == sorted(set(latency.BOUNDS))
    # Each bucket above 10 ms is at most a third wider than its lower bound.
    assert max(b / a for a, b in zip(latency.BOUNDS, latency.BOUNDS[1:], strict=False) if a >= 10) <= 4 / 3


def test_packed_histograms_add_up_bucket_by_bucket():
    rng = random.Random(7)
    a = [int(rng.lognormvariate(6, 1.2)) for _ in range(5000)]
    b = [int(rng.lognormvariate(4, 0.6)) for _ in range(3000)]
    assert latency.pack(a) + latency.pack(b) == latency.pack(a + b)
    assert sum(latency.unpack(latency.pack(a + b))) == 8000
    assert latency.unpack(latency.pack([0, 0, 250])) == [2] + [0] * (latency.bucket_of(250) - 1) + [1]


@pytest.mark.parametrize("seed", range(20))
def test_p95_is_in_the_bucket_of_the_exact_nearest_rank_p95(seed):
    rng = random.Random(seed)
    values = [int(rng.lognormvariate(rng.uniform(2, 9), rng.uniform(0.1, 1.5))) for _ in range(rng.randrange(1, 3000))]
    exact = nearest_rank(values, 0.95)
    low, high = bucket_bounds(exact)
    estimate = latency.p95(latency.pack(values))
    assert low <= estimate <= high


def test_a_group_p95_is_not_the_worst_member_p95():
    # 95 quick requests and 5 slow ones: the p95 is quick-ish; the slow rows alone have p95 2 s.
    quick, slow = latency.pack([100] * 95), latency.pack([2000] * 5)
    assert latency.p95(slow) >= 2000
    assert 100 <= latency.p95(quick + slow) <= 125
    assert latency.p95(latency.pack([100] * 94 + [2000] * 6)) >= 2000


def test_the_slowest_request_caps_the_interpolation():
    same = latency.pack([250] * 40)
    assert latency.p95(same) == 298  # interpolated within [250, 300)
    assert latency.p95(same, slowest=250) == 250
    assert latency.p95(latency.pack([100] * 95 + [270] * 5), slowest=270) == 125  # below the cap: unchanged


def test_edges():
    assert latency.p95(0) is None and latency.p95(None) is None
    assert latency.p95(latency.pack([0])) == 1  # [0, 1 ms): interpolated to its top
    assert latency.p95(latency.pack([10**7])) == latency.LARGEST_MS  # the open bucket answers "at least"
