"""Scheduled forecasts: run one issue time per cron tick, never twice, with a missed-tick policy.

The scheduler knows nothing of Ray or the pipeline: it is given a function that runs one issue
time and a function that reads which issue times the output already holds. The output is the
only state, so restarting a scheduler (or running two) never repeats a finished issue time.

Missed ticks (the scheduler was down, or a run outlasted the next tick) follow `missed`:
`skip` runs only the most recent due tick; `catch_up` runs every due tick after the latest
finished one (and not before `start`), oldest first, keeping the newest `catch_up_limit`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from jobs.cron import CronSchedule, as_utc

MissedPolicy = Literal["catch_up", "skip"]

_MINUTE = timedelta(minutes=1)


class Clock(Protocol):
    """Where the scheduler reads the time and waits; tests pass a fake one."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` before returning."""
        ...


class SystemClock:
    """The real wall clock, in UTC."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        """Block for `seconds` (negative waits return at once)."""
        time.sleep(max(0.0, seconds))


def format_issue_time(t: datetime) -> str:
    """An issue time as logs show it, e.g. 2026-01-01T00:00Z."""
    return as_utc(t).strftime("%Y-%m-%dT%H:%MZ")


@dataclass
class Scheduler:
    """Runs `run_issue` once per tick of `schedule`, reading finished ticks from `completed`."""

    schedule: CronSchedule
    run_issue: Callable[[datetime], None]
    completed: Callable[[], set[datetime]]
    clock: Clock = field(default_factory=SystemClock)
    missed: MissedPolicy = "skip"
    start: datetime | None = None
    catch_up_limit: int = 24
    log: Callable[[str], None] = print
    # Every tick at or before the cursor has been run, skipped, dropped or found done.
    _cursor: datetime | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        """Check the policy and limit, and round `start` up to a whole minute."""
        if self.missed not in ("catch_up", "skip"):
            raise ValueError(f"missed={self.missed!r} is not a policy; use 'catch_up' or 'skip'")
        if self.catch_up_limit < 1:
            raise ValueError(
                f"catch_up_limit={self.catch_up_limit} runs nothing; use 1 or more "
                "(or missed='skip' to run only the latest tick)"
            )
        if self.start is not None:
            self.start = _ceil_minute(as_utc(self.start))

    def run(self, max_ticks: int | None = None) -> list[datetime]:
        """Run due ticks, then each new tick; stop after `max_ticks` attempts (None: never).

        Returns the issue times that ran successfully, in order. Ctrl-C stops cleanly.
        """
        succeeded: list[datetime] = []
        attempts = 0
        try:
            while max_ticks is None or attempts < max_ticks:
                batch = self._due_batch(self.clock.now())
                if not batch:
                    self._sleep_until_next_tick()
                    continue
                if max_ticks is not None:
                    batch = batch[: max_ticks - attempts]
                for issue_time in batch:
                    attempts += 1
                    if self._attempt(issue_time):
                        succeeded.append(issue_time)
        except KeyboardInterrupt:
            self.log("interrupted: scheduler stopped")
        return succeeded

    def _done(self) -> set[datetime]:
        """The finished issue times, as UTC, read fresh from the output."""
        return {as_utc(t) for t in self.completed()}

    def _due_batch(self, now: datetime) -> list[datetime]:
        """The due ticks to attempt now under the missed-tick policy, oldest first."""
        floor = self._first_floor(now) if self._cursor is None else self._cursor
        latest = self.schedule.previous_at_or_before(now)
        window = [latest] if floor is None else self.schedule.ticks_between(floor, latest)
        self._cursor = window[-1] if window else floor
        keep = window[-1:] if self.missed == "skip" else window[-self.catch_up_limit :]
        if len(window) > 1:
            self._log_missed(window, keep)
        return keep

    def _first_floor(self, now: datetime) -> datetime | None:
        """Where the first look starts: the latest finished due issue time or just before start."""
        floors = [t for t in self._done() if t <= now]
        if self.start is not None:
            floors.append(self.start - _MINUTE)
        return max(floors, default=None)

    def _log_missed(self, window: list[datetime], keep: list[datetime]) -> None:
        """Say how many ticks were missed, which run, and which are dropped."""
        missed = len(window) - 1
        head = f"missed {missed} tick{'' if missed == 1 else 's'} (policy {self.missed}"
        dropped = window[: len(window) - len(keep)]
        if self.missed == "skip":
            self.log(
                f"{head}): running only {format_issue_time(keep[0])}, skipping {_span(dropped)}"
            )
        elif dropped:
            self.log(
                f"{head}, limit {self.catch_up_limit}): running {len(keep)} from "
                f"{_span(keep)}, dropping {len(dropped)} oldest {_span(dropped)}"
            )
        else:
            self.log(f"{head}): running all {len(keep)} from {_span(keep)}")

    def _attempt(self, issue_time: datetime) -> bool:
        """Run one issue time unless already done; True when it ran and finished."""
        label = f"issue time {format_issue_time(issue_time)}"
        if issue_time in self._done():
            self.log(f"{label}: already done, skipped")
            return False
        self.log(f"{label}: running")
        began = self.clock.now()
        try:
            self.run_issue(issue_time)
        except Exception as error:
            took = (self.clock.now() - began).total_seconds()
            self.log(f"{label}: failed after {took:.1f} s: {type(error).__name__}: {error}")
            return False
        took = (self.clock.now() - began).total_seconds()
        self.log(f"{label}: done in {took:.1f} s")
        return True

    def _sleep_until_next_tick(self) -> None:
        """Wait for the next tick of the schedule."""
        now = self.clock.now()
        after = now if self._cursor is None else max(now, self._cursor)
        tick = self.schedule.next_after(after)
        seconds = (tick - now).total_seconds()
        self.log(f"next issue time {format_issue_time(tick)} in {seconds:.0f} s")
        self.clock.sleep(seconds)


def _span(ticks: list[datetime]) -> str:
    """A run of ticks for logs: one time, or first..last."""
    first, last = format_issue_time(ticks[0]), format_issue_time(ticks[-1])
    return first if len(ticks) == 1 else f"{first}..{last}"


def _ceil_minute(t: datetime) -> datetime:
    """`t` rounded up to a whole minute, since issue times are whole minutes."""
    whole = t.replace(second=0, microsecond=0)
    return whole if whole == t else whole + _MINUTE
