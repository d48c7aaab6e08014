"""Nextflow's trace values in both forms: exact binary memory units, durations, percentages, dates."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from scalable.telemetry.importers.nextflow_values import (
    parse_count,
    parse_duration,
    parse_memory,
    parse_percent,
    parse_timestamp,
)


@pytest.mark.parametrize("text,expected", [
    ("0", 0), ("512 B", 512), ("2 KB", 2048), ("512 MB", 512 * 1024**2), ("1.2 GB", 1288490189),
    ("1.5 GB", 1536 * 1024**2), ("3.1 TB", 3408486046106), ("1 PB", 1024**5), ("1GB", 1024**3), ("4 G", 4 * 1024**3),
    ("2 KiB", 2048), ("1288490189", 1288490189), ("2813952.0", 2813952), (" 7 ", 7), ("-", None), ("", None),
    ("nan", None),
])
def test_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["1.2 XB", "lots", "-5", "1e999999999", "12 GB!", "inf", "1 GB 2 MB"])
def test_unreadable_memory(text):
    with pytest.raises(ValueError):
        parse_memory(text)


@pytest.mark.parametrize("text,seconds", [
    ("120ms", 0.12), ("0ms", 0), ("4.5s", 4.5), ("3m 4s", 184), ("1m", 60), ("1h 2m 3s", 3723), ("1d 2h", 93600),
    ("2d", 172800), ("1d 2h 3m 4s", 93784), ("184000", 184), ("0", 0), ("10 mins", 600), ("01:02:03", 3723),
    ("-", None),
])
def test_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["3 fortnights", "1h and 2m", "-3s", "s", "1h2"])
def test_unreadable_duration(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text,percent", [("85.3%", 85.3), ("85.3", 85.3), ("712.5%", 712.5), ("0.0%", 0), ("-", None)])
def test_percent(text, percent):
    assert parse_percent(text) == percent


@pytest.mark.parametrize("text,expected", [("1", 1), ("12", 12), ("2.5", 2.5), ("-", None)])
def test_count(text, expected):
    assert parse_count(text) == expected


@pytest.mark.parametrize("text,zone,epoch", [
    ("2024-03-01 12:00:00.123", "UTC", 1709294400.123),
    ("2024-03-01 13:00:00.123", "Europe/Berlin", 1709294400.123),
    ("2024-07-01 14:00:00.000", "Europe/Berlin", 1719835200.0),  # summer time: UTC+2
    ("2024-03-01T12:00:00.123+00:00", "Europe/Berlin", 1709294400.123),  # its own offset wins
    ("1709294400123", "Europe/Berlin", 1709294400.123),  # epoch milliseconds have no zone
])
def test_timestamp(text, zone, epoch):
    assert parse_timestamp(text, ZoneInfo(zone)) == pytest.approx(epoch, abs=1e-6)


def test_timestamp_without_a_zone_is_local_time(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_timestamp("2024-03-01 07:00:00.000", None) == 1709294400.0
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("text", ["yesterday", "2024-13-45 99:99:99", "12:00", "99999999999999999999"])
def test_unreadable_timestamp(text):
    with pytest.raises(ValueError):
        parse_timestamp(text, None)
