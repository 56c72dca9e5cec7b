"""Latency histograms: HdrHistogram from 1 us to 60 s at 3 significant digits.

Workers send histograms encoded; the manager merges them. Raw samples never travel.
"""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3
PERCENTILES = {"p50_us": 50.0, "p90_us": 90.0, "p99_us": 99.0, "p999_us": 99.9}


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_us(hist: HdrHistogram, micros: int) -> None:
    hist.record_value(min(max(micros, LOWEST_US), HIGHEST_US))


def record_counts(hist: HdrHistogram, counts: dict[int, int]) -> None:
    """Record {microseconds: count} pairs, clamped to the histogram's range."""
    for micros, count in counts.items():
        hist.record_value(min(max(micros, LOWEST_US), HIGHEST_US), count)


def encode_counts(pairs: list[list[int]]) -> str:
    """An encoded histogram from [[microseconds, count], ...] (the compiled worker's bucket
    counts, each at its bucket's lowest value, so nothing moves between buckets)."""
    hist = new_histogram()
    record_counts(hist, {int(us): int(count) for us, count in pairs})
    return encode(hist)


def fold_counts(message: dict) -> dict:
    """A worker message with every `X_counts` list replaced by the encoded histogram `X`."""
    for key in [k for k in message if k.endswith("_counts")]:
        pairs = message.pop(key)
        message[key.removesuffix("_counts")] = encode_counts(pairs) if pairs is not None else ""
    return message


def encode(hist: HdrHistogram) -> str:
    return hist.encode().decode("ascii")


def merge(encoded: list[str]) -> HdrHistogram:
    merged = new_histogram()
    for text in encoded:
        if text:
            merged.decode_and_add(text.encode("ascii"))
    return merged


def summarize(hist: HdrHistogram) -> dict[str, float | None]:
    """Percentiles in microseconds; None where nothing was recorded (not a fake zero)."""
    if hist.get_total_count() == 0:
        return {**{k: None for k in PERCENTILES}, "max_us": None}
    out: dict[str, float | None] = {k: float(hist.get_value_at_percentile(p)) for k, p in PERCENTILES.items()}
    out["max_us"] = float(hist.get_max_value())
    return out
