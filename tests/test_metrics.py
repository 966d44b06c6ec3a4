"""Latency histogram and rate meter: accurate enough, in constant memory."""

from __future__ import annotations

import numpy as np
import pytest

from stream.metrics import LatencyHistogram, RateMeter


def test_histogram_percentiles_match_numpy_within_a_bucket() -> None:
    # given a wide spread of latencies
    samples = np.random.default_rng(0).lognormal(mean=3.0, sigma=1.0, size=20_000)
    histogram = LatencyHistogram()
    for ms in samples:
        histogram.add(float(ms))

    # then
    assert histogram.count == samples.size
    assert histogram.mean_ms == pytest.approx(samples.mean())
    assert histogram.max_ms == pytest.approx(samples.max())
    for percent in (50, 95, 99):
        assert histogram.percentile_ms(percent) == pytest.approx(np.percentile(samples, percent), rel=0.015)


def test_empty_histogram_reports_nan() -> None:
    histogram = LatencyHistogram()
    assert np.isnan(histogram.mean_ms) and np.isnan(histogram.percentile_ms(95))


def test_rate_meter_counts_events_per_second_in_its_window() -> None:
    meter = RateMeter(window_s=1.0)
    for tick in range(100):
        meter.tick(now=tick / 50)  # 50 per second for 2 s
    assert meter.per_second == pytest.approx(50.0)
