"""The run lock: one live run per output store, on a local disk and on object storage.

Locally it is an OS file lock (`FileLock`): the kernel releases it when the process dies,
even by SIGKILL. Object storage has no such lock, so there it is a lease (`LeaseLock`):
numbered lease objects `lease/<generation>.json` in the journal. A driver takes the lock
by creating the next generation with a conditional create (of racing drivers exactly one
wins), and only while the newest lease is free: deleted on release, expired (no heartbeat
for `ttl` seconds), or held by a process of this host that is gone. A heartbeat thread
renews the lease and notices when a newer generation appears (the holder stalled past the
expiry and was taken over); `confirm()` then stops the run's writes. Expiry compares the
clocks of the machines involved: the default ttl leaves minutes for their skew.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from typing import IO, Protocol

import psutil

from pipeline.errors import RunInProgressError
from pipeline.storage import Location

LEASE_TTL_SECONDS = 120.0


class RunLock(Protocol):
    """What the runner holds for the life of a run."""

    def acquire(self) -> None: ...

    def release(self) -> None: ...

    def confirm(self) -> None:
        """Raise RunInProgressError if the lock was lost (before each write)."""


def lock_for(store: Location, journal: Location) -> FileLock | LeaseLock:
    """The lock of `store`, whose journal folder is `journal`: a file lock on a local disk,
    a lease on object storage."""
    return FileLock(store, journal) if journal.is_local else LeaseLock(store, journal)


def _refusal(store: Location, owner: str) -> RunInProgressError:
    return RunInProgressError(
        f"output {store.url!r} is being written by another run ({owner}): wait for it to "
        "finish, or choose another output.path"
    )


def _owner_text() -> str:
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    return f"pid {os.getpid()} on {socket.gethostname()}, started {started}"


class FileLock:
    """An exclusive, non-blocking OS lock on the journal's `lock` file."""

    def __init__(self, store: Location, journal: Location) -> None:
        self.store = store
        self.journal = journal
        self.path = os.path.join(journal.url, "lock")
        self._file: IO | None = None

    def acquire(self) -> None:
        """Take the lock, or raise RunInProgressError naming the run that holds it."""
        while True:
            os.makedirs(self.journal.url, exist_ok=True)
            handle = open(self.path, "a+")  # noqa: SIM115 - held open until release()
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                handle.close()
                raise _refusal(self.store, owner) from None
            if self._is_current(handle):
                break
            handle.close()  # locked a file an ending run just removed: lock the new one
        handle.seek(0)
        handle.truncate()
        handle.write(_owner_text())
        handle.flush()
        self._file = handle

    def _is_current(self, handle: IO) -> bool:
        """Whether `handle` is still the file at the lock's path (release may remove it)."""
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(handle.fileno())
        return (held.st_ino, held.st_dev) == (on_disk.st_ino, on_disk.st_dev)

    def confirm(self) -> None:
        """An OS lock cannot be lost while its process lives."""

    def release(self) -> None:
        """Unlock; a journal holding nothing but the lock (a run that wrote nothing) goes."""
        if self._file is not None:
            if self.journal.names() == ["lock"]:
                self.journal.remove_tree()
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class LeaseLock:
    """A lease on object storage, renewed by a heartbeat thread (see the module's text)."""

    def __init__(self, store: Location, journal: Location, ttl: float = LEASE_TTL_SECONDS) -> None:
        self.store = store
        self.journal = journal
        self.leases = journal.child("lease")
        self.ttl = ttl
        self.generation: int | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lease, or raise RunInProgressError naming the run that holds it."""
        while True:
            newest = self._newest()
            if newest is None:
                continue  # the newest lease went between listing and reading: look again
            generation, lease = newest
            if lease and not self._is_free(lease):
                age = time.time() - lease["renewed"]
                raise _refusal(
                    self.store,
                    f"{lease['owner']}; its last heartbeat {age:.0f} s ago, it expires "
                    f"{self.ttl:.0f} s after one",
                )
            if self._lease(generation + 1).create(self._payload()):
                break
            # another driver created that generation first: look again
        self.generation = generation + 1
        for name in self.leases.names():
            if name != self._lease(self.generation).name:
                self.leases.child(name).remove()
        self._heartbeat = threading.Thread(target=self._renew, daemon=True, name="gpgrid-lease")
        self._heartbeat.start()

    def _lease(self, generation: int) -> Location:
        return self.leases.child(f"{generation:09d}.json")

    def _newest(self) -> tuple[int, dict | None] | None:
        """(generation, lease) of the newest lease; (0, None) when there is none; None
        when it vanished while being read."""
        generations = [int(n.split(".")[0]) for n in self.leases.names() if n[:1].isdigit()]
        if not generations:
            return 0, None
        newest = max(generations)
        try:
            return newest, json.loads(self._lease(newest).read_text())
        except FileNotFoundError:
            return None

    def _is_free(self, lease: dict) -> bool:
        """Whether a lease no longer holds: expired, or its process on this host is gone."""
        if time.time() - lease["renewed"] > lease.get("ttl", self.ttl):
            return True
        if lease["host"] != socket.gethostname():
            return False
        return not _process_lives(lease["pid"], lease["process_started"])

    def _payload(self) -> str:
        return json.dumps(
            {
                "owner": _owner_text(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "process_started": psutil.Process().create_time(),
                "renewed": time.time(),
                "ttl": self.ttl,
            }
        )

    def _renew(self) -> None:
        """The heartbeat: rewrite the lease every ttl/4 until released or taken over."""
        last = time.monotonic()
        while not self._stop.wait(self.ttl / 4):
            try:
                newest = self._newest()
                if newest is not None and newest[0] > self.generation:
                    self.lost = f"lease {newest[0]} was taken by {newest[1]['owner']}"
                    return
                self._lease(self.generation).write_text(self._payload())
                last = time.monotonic()
            except OSError as err:  # the store is unreachable for now: try again
                if time.monotonic() - last > self.ttl:
                    self.lost = f"the lease could not be renewed for {self.ttl:.0f} s ({err})"
                    return

    def confirm(self) -> None:
        """Raise RunInProgressError when the lease was lost: the run must stop writing."""
        if self.lost:
            raise RunInProgressError(
                f"this run lost its lock on output {self.store.url!r} ({self.lost}): it stops "
                "here; the tiles it wrote are kept for the run that holds the lock now"
            )

    def release(self) -> None:
        """Stop the heartbeat and delete the lease; a journal holding nothing else goes."""
        if self.generation is None:
            return
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if not self.lost:
            self._lease(self.generation).remove()
            if not self.leases.names() and set(self.journal.names()) <= {"lease"}:
                self.journal.remove_tree()
        self.generation = None

    def __enter__(self) -> LeaseLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _process_lives(pid: int, started: float) -> bool:
    """Whether process `pid` of this host runs and is the one started at `started` (a
    process of another user, which cannot be inspected, counts as running)."""
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
