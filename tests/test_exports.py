"""Which days the export sensor writes after inference runs."""

from datetime import UTC, date, datetime

from constellation_dagster.analytics.sensors import covered_by_export, days_to_export


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_a_run_exports_its_own_day():
    assert days_to_export(_at("2026-11-27T10:00"), _at("2026-11-27T10:05"), date(2026, 11, 27)) == ["2026-11-27"]


def test_a_run_across_midnight_exports_both_days():
    assert days_to_export(_at("2026-11-26T23:59"), _at("2026-11-27T00:01"), None) == ["2026-11-26", "2026-11-27"]


def test_days_skipped_under_a_backlog_are_exported_later():
    # The last export was two days ago; runs since then were skipped while the backlog drained.
    assert days_to_export(_at("2026-11-27T08:00"), _at("2026-11-27T08:01"), date(2026, 11, 25)) == [
        "2026-11-25", "2026-11-26", "2026-11-27"]


def test_a_run_already_exported_by_a_later_export_is_not_exported_again():
    # After a backlog the sensor catches up on each run's end: an export created after the run ended,
    # of its day, holds its results.
    run = (_at("2026-11-27T10:00"), _at("2026-11-27T10:05"))
    assert covered_by_export(*run, _at("2026-11-27T10:06"), date(2026, 11, 27))
    assert not covered_by_export(*run, _at("2026-11-27T10:04"), date(2026, 11, 27))  # started before the run ended
    assert not covered_by_export(*run, _at("2026-11-27T10:06"), date(2026, 11, 26))  # another day
    assert not covered_by_export(_at("2026-11-26T23:59"), _at("2026-11-27T00:01"),
                                 _at("2026-11-27T00:02"), date(2026, 11, 27))  # the run wrote on two days
    assert not covered_by_export(*run, None, None)
