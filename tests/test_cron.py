"""Cron parsing and stepping against hand-checked ticks, and the scheduler on a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.cron import CronSchedule
from jobs.schedule import Scheduler, SystemClock

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def utc(text: str) -> datetime:
    """An aware UTC datetime from ISO text such as '2026-01-01T10:07'."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def next_ticks(expr: str, after: str, count: int) -> list[str]:
    """The next `count` ticks of `expr` after `after`, as ISO text to compare by eye."""
    schedule, t, ticks = CronSchedule.parse(expr), utc(after), []
    for _ in range(count):
        t = schedule.next_after(t)
        ticks.append(t.strftime("%Y-%m-%dT%H:%M"))
    return ticks


# --- parsing and next ticks, checked by hand against a calendar ---------------------------


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("*/15 * * * *", "2026-01-01T10:07", ["2026-01-01T10:15", "2026-01-01T10:30"]),
        ("*/15 * * * *", "2026-01-01T10:45", ["2026-01-01T11:00", "2026-01-01T11:15"]),
        ("*/15 * * * *", "2026-01-01T10:15", ["2026-01-01T10:30"]),  # strictly after
        ("*/15 * * * *", "2026-12-31T23:59:59", ["2027-01-01T00:00"]),
        ("5,35 * * * *", "2026-01-01T10:05", ["2026-01-01T10:35", "2026-01-01T11:05"]),
        ("0 8-18/4 * * *", "2026-01-01T12:00", ["2026-01-01T16:00", "2026-01-02T08:00"]),
        ("10-12 0 * * *", "2026-01-01T00:11", ["2026-01-01T00:12", "2026-01-02T00:10"]),
        # 2026-01-02 is a Friday: the next weekday 06:00 is Monday the 5th.
        ("0 6 * * mon-fri", "2026-01-02T07:00", ["2026-01-05T06:00", "2026-01-06T06:00"]),
        ("0 6 * * MON-Fri", "2026-01-02T05:00", ["2026-01-02T06:00", "2026-01-05T06:00"]),
        ("30 2 1 * *", "2026-01-31T12:00", ["2026-02-01T02:30", "2026-03-01T02:30"]),
        ("30 2 1 * *", "2026-12-15T00:00", ["2027-01-01T02:30"]),
        # Leap day: 2100 is not a leap year, so 2096 is followed by 2104.
        ("0 0 29 2 *", "2024-03-01T00:00", ["2028-02-29T00:00", "2032-02-29T00:00"]),
        ("0 0 29 feb *", "2096-03-01T00:00", ["2104-02-29T00:00"]),
        # Month ends: the 31st skips the 30-day months and February.
        ("0 0 31 * *", "2026-01-31T01:00", ["2026-03-31T00:00", "2026-05-31T00:00"]),
        ("0 12 30 * *", "2026-01-30T12:00", ["2026-03-30T12:00", "2026-04-30T12:00"]),
        ("59 23 * * *", "2026-12-31T23:59", ["2027-01-01T23:59"]),
        ("0 0 1 jan,jul *", "2026-01-01T00:00", ["2026-07-01T00:00", "2027-01-01T00:00"]),
        ("0 0 * 2 *", "2026-02-28T00:00", ["2027-02-01T00:00"]),
        # 0, 7 and sun are all Sunday; 2026-01-04 is a Sunday.
        ("0 12 * * 0", "2026-01-01T00:00", ["2026-01-04T12:00", "2026-01-11T12:00"]),
        ("0 12 * * 7", "2026-01-01T00:00", ["2026-01-04T12:00", "2026-01-11T12:00"]),
        ("0 12 * * sun", "2026-01-01T00:00", ["2026-01-04T12:00", "2026-01-11T12:00"]),
        ("0 0 * * 5-7", "2026-01-01T00:00", ["2026-01-02T00:00", "2026-01-03T00:00"]),
        ("0 0 * * 5-7", "2026-01-03T00:00", ["2026-01-04T00:00", "2026-01-09T00:00"]),
        # Vixie OR: both day fields restricted, so Fridays and the 13th (Tue 2026-01-13).
        (
            "0 0 13 * fri",
            "2026-01-01T00:00",
            ["2026-01-02T00:00", "2026-01-09T00:00", "2026-01-13T00:00", "2026-01-16T00:00"],
        ),
        # A '*'-prefixed day-of-month is unrestricted (Vixie), so it ANDs: odd-day Mondays.
        ("0 0 */2 * mon", "2026-01-01T00:00", ["2026-01-05T00:00", "2026-01-19T00:00"]),
        ("@hourly", "2026-01-01T10:30", ["2026-01-01T11:00", "2026-01-01T12:00"]),
        ("@daily", "2026-01-31T10:30", ["2026-02-01T00:00", "2026-02-02T00:00"]),
        ("@midnight", "2026-01-31T10:30", ["2026-02-01T00:00"]),
        ("@weekly", "2026-01-01T00:00", ["2026-01-04T00:00", "2026-01-11T00:00"]),
        ("@monthly", "2026-01-15T00:00", ["2026-02-01T00:00", "2026-03-01T00:00"]),
        ("@yearly", "2026-01-01T00:00", ["2027-01-01T00:00"]),
        ("@ANNUALLY", "2026-06-01T00:00", ["2027-01-01T00:00"]),
    ],
)
def test_next_after_hand_checked(expr: str, after: str, expected: list[str]) -> None:
    assert next_ticks(expr, after, len(expected)) == expected


@pytest.mark.parametrize(
    ("expr", "at", "expected"),
    [
        ("*/15 * * * *", "2026-01-01T10:15", "2026-01-01T10:15"),  # at a tick: that tick
        ("*/15 * * * *", "2026-01-01T10:14:59", "2026-01-01T10:00"),
        ("0 6 * * mon-fri", "2026-01-05T05:59", "2026-01-02T06:00"),
        ("0 0 29 2 *", "2104-02-28T00:00", "2096-02-29T00:00"),
        ("0 0 31 * *", "2026-03-01T00:00", "2026-01-31T00:00"),
        ("30 2 1 * *", "2027-01-01T02:29", "2026-12-01T02:30"),
        ("0 0 13 * fri", "2026-01-15T00:00", "2026-01-13T00:00"),
    ],
)
def test_previous_at_or_before_hand_checked(expr: str, at: str, expected: str) -> None:
    assert CronSchedule.parse(expr).previous_at_or_before(utc(at)) == utc(expected)


def test_ticks_between_excludes_start_and_includes_end() -> None:
    schedule = CronSchedule.parse("0 * * * *")
    ticks = schedule.ticks_between(utc("2026-01-01T00:00"), utc("2026-01-01T03:00"))
    assert ticks == [utc("2026-01-01T01:00"), utc("2026-01-01T02:00"), utc("2026-01-01T03:00")]
    assert schedule.ticks_between(utc("2026-01-01T00:00"), utc("2026-01-01T00:59")) == []


def test_naive_times_are_utc_and_other_zones_are_converted() -> None:
    schedule = CronSchedule.parse("0 6 * * *")
    naive = schedule.next_after(datetime(2026, 1, 1, 5, 0))
    assert naive == utc("2026-01-01T06:00") and naive.tzinfo is UTC
    plus_two = timezone(timedelta(hours=2))
    assert schedule.next_after(datetime(2026, 1, 1, 8, 30, tzinfo=plus_two)) == utc(
        "2026-01-02T06:00"
    )


def test_str_is_the_expression_and_whitespace_is_flexible() -> None:
    assert str(CronSchedule.parse("@daily")) == "@daily"
    assert str(CronSchedule.parse("  0  6 * *\tmon-fri ")) == "0  6 * *\tmon-fri"
    assert CronSchedule.parse("0 0 * * 7").weekdays == CronSchedule.parse("0 0 * * sun").weekdays


@pytest.mark.parametrize(
    ("expr", "field", "detail"),
    [
        ("60 * * * *", "'minute' (1st)", "60, outside 0-59"),
        ("0 25 * * *", "'hour' (2nd)", "25, outside 0-23"),
        ("0 0 0 * *", "'day-of-month' (3rd)", "0, outside 1-31"),
        ("0 0 * 13 *", "'month' (4th)", "13, outside 1-12"),
        ("0 0 * * 8", "'day-of-week' (5th)", "8, outside 0-7"),
        ("0 0 * foo *", "'month' (4th)", "'foo', not a number or a name (jan..dec)"),
        ("0 0 * * funday", "'day-of-week' (5th)", "not a number or a name (sun..sat)"),
        ("0 mon * * *", "'hour' (2nd)", "'mon', not a number"),
        ("*/0 * * * *", "'minute' (1st)", "the step '0'"),
        ("*/x * * * *", "'minute' (1st)", "the step 'x'"),
        ("5/10 * * * *", "'minute' (1st)", "write '*/10' or '5-59/10'"),
        ("0 22-2 * * *", "'hour' (2nd)", "'22-23,0-2'"),
        ("1,,2 * * * *", "'minute' (1st)", "an empty value"),
        ("-1 * * * *", "'minute' (1st)", "an empty value"),
        ("0 0 30 2 *", "'day-of-month' (3rd)", "never occurs"),
        ("0 0 31 apr,jun *", "'day-of-month' (3rd)", "never occurs"),
    ],
)
def test_bad_field_names_the_field_the_expression_and_the_fix(
    expr: str, field: str, detail: str
) -> None:
    with pytest.raises(ValueError) as error:
        CronSchedule.parse(expr)
    message = str(error.value)
    assert f"cron field {field}" in message
    assert detail in message
    assert repr(expr) in message
    assert "; " in message  # the fix follows the problem


@pytest.mark.parametrize(
    ("expr", "detail"),
    [("* * * *", "4 fields, expected 5"), ("", "0 fields"), ("@fortnightly", "unknown cron macro")],
)
def test_bad_shape_names_the_problem(expr: str, detail: str) -> None:
    with pytest.raises(ValueError, match=detail):
        CronSchedule.parse(expr)


def test_impossible_day_is_fine_when_weekdays_also_choose_days() -> None:
    # With both day fields restricted (OR), Mondays in February still run.
    assert next_ticks("0 0 30 2 mon", "2026-01-01T00:00", 1) == ["2026-02-02T00:00"]


# --- property: next_after agrees with an independent reference matcher --------------------

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@st.composite
def cron_term(draw, low: int, high: int, names: tuple[str, ...]) -> tuple[str, set[int]]:
    """One list term (`n`, `a-b` or `a-b/s`), as text and as the values it stands for."""
    a = draw(st.integers(low, high))
    b = draw(st.integers(a, high))
    step = draw(st.integers(1, 5))

    def show(v: int) -> str:
        named = names and v - low < len(names) and draw(st.booleans())
        return names[v - low] if named else str(v)

    form = draw(st.sampled_from(["value", "range", "step"]))
    if form == "value":
        return show(a), {a}
    if form == "range":
        return f"{show(a)}-{show(b)}", set(range(a, b + 1))
    return f"{show(a)}-{show(b)}/{step}", set(range(a, b + 1, step))


@st.composite
def cron_field(draw, low: int, high: int, names: tuple[str, ...] = ()) -> tuple[str, set[int]]:
    """A field's text (`*`, `*/s` or a list of terms) and the values it stands for."""
    form = draw(st.sampled_from(["star", "star_step", "list"]))
    if form == "star":
        return "*", set(range(low, high + 1))
    if form == "star_step":
        step = draw(st.integers(1, 9))
        return f"*/{step}", set(range(low, high + 1, step))
    terms = draw(st.lists(cron_term(low, high, names), min_size=1, max_size=3))
    return ",".join(text for text, _ in terms), set().union(*(values for _, values in terms))


@dataclass
class Reference:
    """A cron expression with its value sets, matched the plain way for comparison."""

    expr: str
    fields: list[tuple[str, set[int]]]

    def day_matches(self, d: date) -> bool:
        """Vixie day rule, computed directly from the drawn value sets."""
        (dom_text, days), (_, months), (dow_text, weekdays) = self.fields[2:]
        dom = d.day in days
        dow = d.isoweekday() % 7 in weekdays or (d.isoweekday() == 7 and 7 in weekdays)
        both = not dom_text.startswith("*") and not dow_text.startswith("*")
        return d.month in months and ((dom or dow) if both else (dom and dow))

    def matches(self, t: datetime) -> bool:
        """Whether minute `t` is a tick."""
        (_, minutes), (_, hours) = self.fields[:2]
        return self.day_matches(t.date()) and t.hour in hours and t.minute in minutes

    def can_run(self) -> bool:
        """False only when a lone day-of-month names days none of its months have."""
        (dom_text, days), (_, months), (dow_text, _) = self.fields[2:]
        if dom_text.startswith("*") or not dow_text.startswith("*"):
            return True
        return any(day <= MONTH_DAYS[m - 1] for m in months for day in days)


@st.composite
def cron_reference(draw) -> Reference:
    """A random valid-syntax cron expression with its expected value sets."""
    fields = [
        draw(cron_field(0, 59)),
        draw(cron_field(0, 23)),
        draw(cron_field(1, 31)),
        draw(cron_field(1, 12, MONTHS)),
        draw(cron_field(0, 7, WEEKDAYS)),
    ]
    return Reference(" ".join(text for text, _ in fields), fields)


times = st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC))


def assert_no_tick_between(ref: Reference, after: datetime, before: datetime) -> None:
    """No minute in (after, before) is a tick: minute by minute on days that could hold one."""
    t = after.replace(second=0, microsecond=0) + MINUTE
    while t < before:
        if ref.day_matches(t.date()):
            assert not ref.matches(t), f"{ref.expr}: skipped tick {t}"
            t += MINUTE
        else:
            t = t.replace(hour=0, minute=0) + timedelta(days=1)


@settings(max_examples=300, deadline=None)
@given(ref=cron_reference(), t=times)
def test_next_after_is_the_first_matching_minute(ref: Reference, t: datetime) -> None:
    if not ref.can_run():
        with pytest.raises(ValueError, match="never occurs"):
            CronSchedule.parse(ref.expr)
        return
    schedule = CronSchedule.parse(ref.expr)
    tick = schedule.next_after(t)
    assert tick > t and tick.second == tick.microsecond == 0
    assert ref.matches(tick), f"{ref.expr}: {tick} does not match"
    assert_no_tick_between(ref, t, tick)
    assert schedule.previous_at_or_before(tick) == tick
    assert schedule.previous_at_or_before(tick - MINUTE) <= t


@settings(max_examples=200, deadline=None)
@given(ref=cron_reference(), t=times)
def test_previous_at_or_before_is_the_last_matching_minute(ref: Reference, t: datetime) -> None:
    if not ref.can_run():
        return
    schedule = CronSchedule.parse(ref.expr)
    tick = schedule.previous_at_or_before(t)
    assert tick <= t and ref.matches(tick)
    minute = t.replace(second=0, microsecond=0)
    assert_no_tick_between(ref, tick, minute + MINUTE)
    assert schedule.next_after(tick) > minute


@settings(max_examples=50, deadline=None)
@given(
    expr=st.sampled_from(["*/7 * * * *", "0 */5 * * 1-5", "15 3 1,15 * *", "0 0 13 * fri"]),
    t=times,
)
def test_ticks_between_is_every_tick_in_the_window(expr: str, t: datetime) -> None:
    schedule = CronSchedule.parse(expr)
    end = t + timedelta(days=3)
    ticks = schedule.ticks_between(t, end)
    brute, m = [], t.replace(second=0, microsecond=0) + MINUTE
    while m <= end:
        if schedule.matches(m):
            brute.append(m)
        m += MINUTE
    assert ticks == brute


# --- the scheduler, on a fake clock -------------------------------------------------------


@dataclass
class FakeClock:
    """A clock whose sleep moves time forward instantly."""

    t: datetime

    def now(self) -> datetime:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


@dataclass
class Output:
    """Stands in for the forecast store: run() records an issue time, done() lists them."""

    clock: FakeClock
    done: set[datetime] = field(default_factory=set)
    calls: list[datetime] = field(default_factory=list)
    took: timedelta = timedelta(seconds=3.2)
    slow: dict[datetime, timedelta] = field(default_factory=dict)
    fail_on: set[datetime] = field(default_factory=set)

    def run(self, issue_time: datetime) -> None:
        self.calls.append(issue_time)
        self.clock.t += self.slow.get(issue_time, self.took)
        if issue_time in self.fail_on:
            raise RuntimeError("tile 3 ran out of memory")
        self.done.add(issue_time)

    def completed(self) -> set[datetime]:
        return set(self.done)


def hourly(output: Output, logs: list[str], **options) -> Scheduler:
    """An hourly scheduler over `output` on its fake clock, logging into `logs`."""
    return Scheduler(
        schedule=CronSchedule.parse("@hourly"),
        run_issue=output.run,
        completed=output.completed,
        clock=output.clock,
        log=logs.append,
        **options,
    )


def hours(*texts: str) -> list[datetime]:
    """Issue times on 2026-01-01 at the given HH:MM."""
    return [utc(f"2026-01-01T{text}") for text in texts]


def test_three_ticks_run_three_distinct_issue_times() -> None:
    output, logs = Output(FakeClock(utc("2026-01-01T00:30"))), []
    ran = hourly(output, logs).run(max_ticks=3)
    assert ran == output.calls == hours("00:00", "01:00", "02:00")
    assert "issue time 2026-01-01T00:00Z: running" in logs
    assert "issue time 2026-01-01T00:00Z: done in 3.2 s" in logs
    assert any(line.startswith("next issue time 2026-01-01T01:00Z in ") for line in logs)
    assert output.clock.t == utc("2026-01-01T02:00:03.2")


def test_restart_never_runs_a_finished_issue_time_again() -> None:
    output, logs = Output(FakeClock(utc("2026-01-01T00:30"))), []
    first = hourly(output, logs, missed="catch_up").run(max_ticks=3)
    restarted = hourly(output, logs, missed="catch_up").run(max_ticks=1)
    assert restarted == hours("03:00")
    assert output.calls == first + restarted


def test_restart_with_nothing_new_due_waits_for_the_next_tick() -> None:
    output = Output(FakeClock(utc("2026-01-01T02:10")), done=set(hours("00:00", "01:00", "02:00")))
    logs: list[str] = []
    assert hourly(output, logs, missed="catch_up").run(max_ticks=1) == hours("03:00")
    assert logs[0] == "next issue time 2026-01-01T03:00Z in 3000 s"


def outage(**options) -> tuple[list[datetime], list[str]]:
    """Ticks 00-02 done, then the clock jumps past 5 more ticks (03..07) before a restart."""
    output = Output(FakeClock(utc("2026-01-01T07:30")), done=set(hours("00:00", "01:00", "02:00")))
    logs: list[str] = []
    max_ticks = options.pop("max_ticks", 5)
    hourly(output, logs, **options).run(max_ticks=max_ticks)
    return output.calls, logs


def test_outage_with_catch_up_runs_every_missed_tick_oldest_first() -> None:
    calls, logs = outage(missed="catch_up")
    assert calls == hours("03:00", "04:00", "05:00", "06:00", "07:00")
    assert "missed 4 ticks (policy catch_up): running all 5 from " in logs[0]


def test_outage_with_skip_runs_only_the_latest_tick() -> None:
    calls, logs = outage(missed="skip", max_ticks=2)
    assert calls == hours("07:00", "08:00")
    assert logs[0] == (
        "missed 4 ticks (policy skip): running only 2026-01-01T07:00Z, "
        "skipping 2026-01-01T03:00Z..2026-01-01T06:00Z"
    )


def test_catch_up_limit_keeps_the_newest_ticks_and_says_what_it_dropped() -> None:
    calls, logs = outage(missed="catch_up", catch_up_limit=2, max_ticks=2)
    assert calls == hours("06:00", "07:00")
    assert "limit 2): running 2 from 2026-01-01T06:00Z..2026-01-01T07:00Z" in logs[0]
    assert "dropping 3 oldest 2026-01-01T03:00Z..2026-01-01T05:00Z" in logs[0]


@pytest.mark.parametrize(
    ("missed", "expected"),
    [("skip", ["00:00", "03:00", "04:00"]), ("catch_up", ["00:00", "01:00", "02:00", "03:00"])],
)
def test_a_run_that_outlasts_ticks_applies_the_policy(missed: str, expected: list[str]) -> None:
    output, logs = Output(FakeClock(utc("2026-01-01T00:30"))), []
    output.slow = {utc("2026-01-01T00:00"): timedelta(hours=3)}  # ends at 03:30
    ran = hourly(output, logs, missed=missed).run(max_ticks=len(expected))
    assert ran == hours(*expected)
    assert any(line.startswith("missed 2 ticks") for line in logs)


def test_a_failing_run_is_logged_and_the_next_tick_still_runs() -> None:
    output, logs = Output(FakeClock(utc("2026-01-01T00:30"))), []
    output.fail_on = set(hours("00:00"))
    ran = hourly(output, logs).run(max_ticks=2)
    assert output.calls == hours("00:00", "01:00")
    assert ran == hours("01:00")
    assert (
        "issue time 2026-01-01T00:00Z: failed after 3.2 s: RuntimeError: tile 3 ran out of memory"
        in logs
    )


def test_catch_up_restart_retries_a_failed_issue_time() -> None:
    output, logs = Output(FakeClock(utc("2026-01-01T00:30"))), []
    output.fail_on = set(hours("00:00"))
    start = utc("2026-01-01T00:00")
    assert hourly(output, logs, missed="catch_up", start=start).run(max_ticks=1) == []
    output.fail_on.clear()
    output.clock.t = utc("2026-01-01T00:40")
    retried = hourly(output, logs, missed="catch_up", start=start).run(max_ticks=1)
    assert retried == hours("00:00")


def test_start_bounds_catch_up_from_below() -> None:
    output, logs = Output(FakeClock(utc("2026-01-01T05:30"))), []
    hourly(output, logs, missed="catch_up", start=utc("2026-01-01T03:00")).run(max_ticks=3)
    assert output.calls == hours("03:00", "04:00", "05:00")


def test_start_in_the_future_waits_for_the_first_tick_at_or_after_it() -> None:
    output, logs = Output(FakeClock(utc("2026-01-01T00:30"))), []
    start = utc("2026-01-01T02:00:30")  # part-way into a minute: 02:00 is before it
    hourly(output, logs, missed="catch_up", start=start).run(max_ticks=1)
    assert output.calls == hours("03:00")
    assert logs[0] == "next issue time 2026-01-01T03:00Z in 9000 s"


def test_a_tick_finished_elsewhere_while_sleeping_is_not_run_again() -> None:
    class RacingClock(FakeClock):
        """Sleeps, and another scheduler on the same output finishes the tick meanwhile."""

        def sleep(self, seconds: float) -> None:
            super().sleep(seconds)
            other.run(self.t.replace(minute=0, second=0, microsecond=0))

    clock, logs = RacingClock(utc("2026-01-01T00:30")), []
    output = Output(clock)
    other = Output(clock, done=output.done)
    ran = hourly(output, logs).run(max_ticks=2)
    assert ran == output.calls == hours("00:00")
    assert other.calls == hours("01:00")
    assert "issue time 2026-01-01T01:00Z: already done, skipped" in logs


def test_ctrl_c_stops_cleanly_and_returns_what_ran() -> None:
    output, logs = Output(FakeClock(utc("2026-01-01T00:30"))), []

    def run_then_interrupt(issue_time: datetime) -> None:
        if output.calls:
            raise KeyboardInterrupt
        output.run(issue_time)

    scheduler = hourly(output, logs)
    scheduler.run_issue = run_then_interrupt
    assert scheduler.run() == hours("00:00")
    assert logs[-1] == "interrupted: scheduler stopped"


@pytest.mark.parametrize(
    ("options", "detail"),
    [({"missed": "later"}, "'catch_up' or 'skip'"), ({"catch_up_limit": 0}, "use 1 or more")],
)
def test_bad_options_are_refused(options: dict, detail: str) -> None:
    output = Output(FakeClock(utc("2026-01-01T00:30")))
    with pytest.raises(ValueError, match=detail):
        hourly(output, [], **options)


def test_system_clock_is_aware_utc() -> None:
    clock = SystemClock()
    before = clock.now()
    clock.sleep(-1.0)  # a tick already past: no wait
    assert before.tzinfo is UTC and clock.now() >= before
