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


def ticked(times: list[float], *, window_s: float = 2.0) -> RateMeter:
    meter = RateMeter(window_s=window_s)
    for at in times:
        meter.tick(now=at)
    return meter


def test_a_steady_rate_is_measured_as_it_is() -> None:
    # given 30 frames a second for 10 s
    meter = ticked([index / 30 for index in range(300)])

    # then at the last frame, and between frames, it is 30 a second
    assert meter.per_second(now=299 / 30) == pytest.approx(30.0)
    assert meter.per_second(now=299.5 / 30) == pytest.approx(30.0, rel=0.02)


def test_bursts_count_as_frames_over_the_time_they_take() -> None:
    # given 10 frames 1 ms apart once a second for 10 s
    times = [second + frame / 1000 for second in range(10) for frame in range(10)]
    meter = ticked(times)

    # then from a window on, at any moment, in a burst or between them, it is 10 a second, not 1000
    for now in (2.005, 2.5, 5.0, 7.009, 9.004, 9.5, 9.999):
        assert meter.per_second(now=now) == pytest.approx(10.0, rel=0.06)


def test_a_stall_decays_towards_zero() -> None:
    # given 30 frames a second for 5 s, then none
    meter = ticked([index / 30 for index in range(150)])

    # then the rate falls with the time that passes, to 0 once a window has passed without a frame
    halfway = meter.per_second(now=149 / 30 + 1.0)
    assert halfway == pytest.approx(15.0, rel=0.05)
    assert meter.per_second(now=149 / 30 + 2.1) == 0.0


def test_the_first_frames_give_no_rate_until_the_warm_up_has_passed() -> None:
    # given two frames 1 ms apart
    meter = ticked([0.0, 0.001])

    # then there is no rate yet: not 0, nor 1000
    assert RateMeter().per_second(now=5.0) is None
    assert meter.per_second(now=0.001) is None
    assert meter.per_second(now=0.4) is None


def test_before_a_window_has_passed_the_rate_is_over_the_time_since_the_first_frame() -> None:
    # given 30 frames a second for 0.8 s
    meter = ticked([index / 30 for index in range(25)])

    # then
    assert meter.per_second(now=24 / 30) == pytest.approx(30.0)
