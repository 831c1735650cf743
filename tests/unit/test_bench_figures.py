"""The benchmarks' own arithmetic: a figure they cannot measure is printed as unmeasured, never
as a number that reads like a result."""

from benchmarks.pipeline import _drain_rate, _ratio


def test_one_batch_has_no_drain_rate_and_no_ratio() -> None:
    rate, secs = _drain_rate([(10.0, 20_000)], 20_000)
    assert (rate, secs) == (0.0, 0.0)
    assert _ratio(rate, 60_000.0) is None  # not 0.0: "infinitely slow" is not what was measured


def test_drain_rate_counts_from_the_first_batch_to_the_one_that_completes_the_backlog() -> None:
    pts = [(10.0, 1_000), (11.0, 3_000), (12.0, 5_000), (13.0, 6_000)]
    rate, secs = _drain_rate(pts, 5_000)
    assert (rate, secs) == (2_000.0, 2.0)
    assert _ratio(rate, 8_000.0) == 0.25
    assert _ratio(rate, 0.0) is None
