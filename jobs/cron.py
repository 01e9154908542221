"""Cron schedules: standard 5-field expressions in UTC, parsed and stepped without croniter.

Fields are `minute hour day-of-month month day-of-week`; each takes `*`, a number, a range
`a-b`, a step `*/n` or `a-b/n`, or a comma list of those. Months take jan..dec and weekdays
sun..sat (0 and 7 are both Sunday), case-insensitive. Macros: @hourly, @daily (@midnight),
@weekly, @monthly, @yearly (@annually).

Day matching follows Vixie cron: when both day fields are restricted, a day matches if either
matches; otherwise both must. As in Vixie cron, a day field counts as unrestricted when its text
starts with `*`, so `*/2` in day-of-month ANDs with day-of-week.

All times are UTC. Aware datetimes are converted to UTC; naive datetimes are taken as UTC.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

_MINUTE = timedelta(minutes=1)
_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)

_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

# The most days each month can have (February in a leap year).
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@dataclass(frozen=True)
class _Field:
    """One of the five cron fields: its name, position, bounds and optional value names."""

    name: str
    position: str
    low: int
    high: int
    names: tuple[str, ...] = ()

    def value_kind(self) -> str:
        """What a value of this field may be, for error messages."""
        if not self.names:
            return "a number"
        return f"a number or a name ({self.names[0]}..{self.names[-1]})"


_FIELDS = (
    _Field("minute", "1st", 0, 59),
    _Field("hour", "2nd", 0, 23),
    _Field("day-of-month", "3rd", 1, 31),
    _Field(
        "month",
        "4th",
        1,
        12,
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    ),
    _Field("day-of-week", "5th", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)


def as_utc(t: datetime) -> datetime:
    """Return `t` as an aware UTC datetime; a naive `t` is taken to be UTC already."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


@dataclass(frozen=True)
class CronSchedule:
    """A parsed cron expression; build one with `CronSchedule.parse`."""

    expr: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]  # 0 = Sunday .. 6 = Saturday
    either_day: bool  # both day fields restricted: a day matches if either matches

    @classmethod
    def parse(cls, expr: str) -> CronSchedule:
        """Parse a 5-field cron expression or macro; ValueError names the bad field and fix."""
        text = expr.strip()
        fields = _expand_macro(text).split()
        if len(fields) != 5:
            raise ValueError(
                f"cron expression {expr!r} has {len(fields)} fields, expected 5 "
                "(minute hour day-of-month month day-of-week), e.g. '0 6 * * mon-fri', "
                f"or a macro ({', '.join(_MACROS)})"
            )
        values = [_parse_field(f, spec, expr) for f, spec in zip(fields, _FIELDS, strict=True)]
        minutes, hours, days, months, weekdays = values
        dom_star, dow_star = fields[2].startswith("*"), fields[4].startswith("*")
        if dow_star and not dom_star:
            _check_days_exist(days, months, fields[2], expr)
        return cls(
            expr=text,
            minutes=minutes,
            hours=hours,
            days=days,
            months=months,
            weekdays=tuple(sorted({d % 7 for d in weekdays})),
            either_day=not (dom_star or dow_star),
        )

    def __str__(self) -> str:
        """The expression as written, so logs and specs show what the user typed."""
        return self.expr

    def matches(self, t: datetime) -> bool:
        """Whether the minute containing `t` is a tick of this schedule."""
        t = as_utc(t)
        return (
            t.month in self.months
            and self._day_matches(t.date())
            and t.hour in self.hours
            and t.minute in self.minutes
        )

    def next_after(self, t: datetime) -> datetime:
        """The first tick strictly after `t` (seconds zeroed), skipping whole months/days/hours."""
        t = as_utc(t).replace(second=0, microsecond=0) + _MINUTE
        while True:
            if t.month not in self.months:
                t = _month_start(t.year, t.month + 1)
            elif not self._day_matches(t.date()):
                t = _day_start(t) + _DAY
            elif (hour := _first_at_or_after(self.hours, t.hour)) != t.hour:
                t = _day_start(t) + _DAY if hour is None else t.replace(hour=hour, minute=0)
            elif (minute := _first_at_or_after(self.minutes, t.minute)) is None:
                t = t.replace(minute=0) + _HOUR
            else:
                return t.replace(minute=minute)

    def previous_at_or_before(self, t: datetime) -> datetime:
        """The last tick at or before `t`; every valid schedule has one, so never None."""
        t = as_utc(t).replace(second=0, microsecond=0)
        while True:
            if t.month not in self.months:
                t = _month_start(t.year, t.month) - _MINUTE
            elif not self._day_matches(t.date()):
                t = _day_start(t) - _MINUTE
            elif (hour := _last_at_or_before(self.hours, t.hour)) != t.hour:
                t = _day_start(t) - _MINUTE if hour is None else t.replace(hour=hour, minute=59)
            elif (minute := _last_at_or_before(self.minutes, t.minute)) is None:
                t = t.replace(minute=0) - _MINUTE
            else:
                return t.replace(minute=minute)

    def ticks_between(self, start: datetime, end: datetime) -> list[datetime]:
        """All ticks in (start, end], oldest first: the issue times due in that window."""
        end = as_utc(end)
        ticks = []
        t = self.next_after(start)
        while t <= end:
            ticks.append(t)
            t = self.next_after(t)
        return ticks

    def _day_matches(self, d: date) -> bool:
        """Whether day `d` passes the day-of-month/day-of-week rule (Vixie OR or AND)."""
        dom = d.day in self.days
        dow = d.isoweekday() % 7 in self.weekdays
        return (dom or dow) if self.either_day else (dom and dow)


def _expand_macro(text: str) -> str:
    """The 5-field form of an @macro, or `text` unchanged when it is not a macro."""
    if not text.startswith("@"):
        return text
    try:
        return _MACROS[text.lower()]
    except KeyError:
        raise ValueError(
            f"unknown cron macro {text!r}; use one of {', '.join(_MACROS)} "
            "or a 5-field expression such as '0 0 * * *'"
        ) from None


def _field_error(spec: _Field, problem: str, expr: str, fix: str) -> ValueError:
    """A ValueError naming the field, its position, the problem, the expression and the fix."""
    return ValueError(
        f"cron field '{spec.name}' ({spec.position}) has {problem}, in {expr!r}; {fix}"
    )


def _parse_field(text: str, spec: _Field, expr: str) -> tuple[int, ...]:
    """The sorted values one field's text (a comma list of terms) selects."""
    values: set[int] = set()
    for term in text.split(","):
        values.update(_parse_term(term, spec, expr))
    return tuple(sorted(values))


def _parse_term(term: str, spec: _Field, expr: str) -> range:
    """The values of one term: `*`, `n`, `a-b`, `*/n` or `a-b/n`."""
    base, slash, step_text = term.partition("/")
    step = _parse_step(step_text, spec, expr) if slash else 1
    if base == "*":
        return range(spec.low, spec.high + 1, step)
    if "-" in base:
        first, _, last = base.partition("-")
        low, high = _parse_value(first, spec, expr), _parse_value(last, spec, expr)
        if low > high:
            raise _field_error(
                spec,
                f"the range {base!r} running backwards",
                expr,
                f"write the smaller end first, or a list such as '{first}-{spec.high},{spec.low}-"
                f"{last}'",
            )
        return range(low, high + 1, step)
    if slash:
        raise _field_error(
            spec,
            f"the step {term!r} without a range",
            expr,
            f"write '*/{step_text}' or '{base}-{spec.high}/{step_text}'",
        )
    value = _parse_value(base, spec, expr)
    return range(value, value + 1)


def _parse_step(text: str, spec: _Field, expr: str) -> int:
    """The step after a `/`: a whole number of at least 1."""
    if not (text.isascii() and text.isdigit()) or int(text) == 0:
        raise _field_error(
            spec, f"the step {text!r}", expr, "a step must be a whole number of at least 1"
        )
    return int(text)


def _parse_value(text: str, spec: _Field, expr: str) -> int:
    """One number or name of a field, checked against the field's bounds."""
    fix = f"use {spec.value_kind()} from {spec.low} to {spec.high}"
    if text.lower() in spec.names:
        return spec.names.index(text.lower()) + spec.low
    if not (text.isascii() and text.isdigit()):
        problem = "an empty value" if not text else f"{text!r}, not {spec.value_kind()}"
        raise _field_error(spec, problem, expr, fix)
    value = int(text)
    if not spec.low <= value <= spec.high:
        raise _field_error(spec, f"{value}, outside {spec.low}-{spec.high}", expr, fix)
    return value


def _check_days_exist(days: tuple[int, ...], months: tuple[int, ...], text: str, expr: str) -> None:
    """Reject a day-of-month that no chosen month has (e.g. 30 feb), which would never run."""
    if any(day <= _MONTH_DAYS[month - 1] for month in months for day in days):
        return
    raise _field_error(
        _FIELDS[2],
        f"{text!r}, a day that never occurs in the chosen month(s)",
        expr,
        "pick days that exist in those months, e.g. 28 for February",
    )


def _first_at_or_after(values: tuple[int, ...], current: int) -> int | None:
    """The smallest of the sorted `values` that is >= `current`, or None."""
    i = bisect_left(values, current)
    return values[i] if i < len(values) else None


def _last_at_or_before(values: tuple[int, ...], current: int) -> int | None:
    """The largest of the sorted `values` that is <= `current`, or None."""
    i = bisect_right(values, current)
    return values[i - 1] if i > 0 else None


def _month_start(year: int, month: int) -> datetime:
    """Midnight UTC on the 1st of `month` (13 rolls into January of the next year)."""
    return datetime(year + (month - 1) // 12, (month - 1) % 12 + 1, 1, tzinfo=UTC)


def _day_start(t: datetime) -> datetime:
    """Midnight at the start of `t`'s day."""
    return t.replace(hour=0, minute=0)
