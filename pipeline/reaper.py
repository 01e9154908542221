"""Make an embedded Ray end with the driver that started it, even when the driver is SIGKILLed.

Why this is needed (Ray 2.x, Linux). `ray.init()` starts gcs_server, raylet, dashboard.py,
monitor.py and log_monitor.py with PR_SET_PDEATHSIG, so the kernel kills them when the driver
dies. The raylet's own children are not covered: the DashboardAgent and RuntimeEnvAgent notice
the raylet is gone (ray/_private/process_watcher.py), then call `publish_error_to_driver` on the
dead GCS and block there in C++ on the main thread, so their SIGTERM handlers never run; they
live on under pid 1, holding ports and memory. `ray.init` has no option to skip them: the raylet
is always given both (`--dashboard_agent_command`, `--runtime_env_agent_command` in
ray/_private/services.py), whatever `include_dashboard` says.

How. The process that starts the cluster (`ensure_ray`):

1. writes a record `$RAY_TMPDIR/gpgrid_drivers/<pid>-<token>.json` holding its pid, start time
   and a random token, *before* `ray.init`, so even a kill during start-up leaves a trace;
2. puts the token into its environment (`GPGRID_RAY_OWNER`) only while `ray.init` runs. Every
   Ray process inherits it - the raylet passes its environment on to the agents and to workers
   started later. Agents and workers rename themselves `ray::...` (setproctitle), which wipes
   their command line and can overwrite the environment /proc shows, so a `ray::*` process that
   holds a file open under the session directory (its logs) counts as well. Both are checked at
   kill time: no pid lists to go stale, no risk of pid reuse;
3. starts a watchdog, `python -m pipeline.reaper watch <record>`, in its own session so that a
   terminal's Ctrl-C or a kill of the driver's process group does not reach it.

The watchdog polls the driver (pid + start time) and the raylet. It does nothing while both live.
Once the driver is gone, or the raylet is gone (`ray.shutdown()`; after a short grace so Ray's own
shutdown finishes first), it sends SIGTERM to every live process of the cluster, SIGKILL to
those left after a grace period, removes the record and exits.

If the watchdog is killed too, the record stays; the next `ensure_ray` calls `reap_orphans()`,
which does the same for every record whose driver is dead.

Only `psutil` and the standard library are imported here, so the watchdog starts fast and small.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

MARKER_ENV = "GPGRID_RAY_OWNER"
POLL_S = 0.5  # how often the watchdog looks at the driver and the raylet
GRACE_S = 3.0  # SIGTERM -> SIGKILL; the agents ignore SIGTERM, others exit cleanly within it
SHUTDOWN_GRACE_S = 2.0  # raylet gone, driver alive: let ray.shutdown() finish its own cleanup


@dataclass
class Record:
    """What a driver that started an embedded Ray leaves under RAY_TMPDIR while it runs."""

    driver_pid: int
    driver_started: float  # psutil create_time, so a reused pid is not taken for the driver
    token: str
    session_dir: str = ""
    watchdog_pid: int | None = None

    @property
    def path(self) -> Path:
        """The record's file."""
        return records_dir() / f"{self.driver_pid}-{self.token}.json"

    def save(self) -> None:
        """Write the record atomically (a reader never sees half a file)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(self.path)

    def remove(self) -> None:
        """Delete the record and the watchdog's log."""
        for path in (self.path, self.path.with_suffix(".log")):
            path.unlink(missing_ok=True)

    def session_dirs(self) -> list[str]:
        """The Ray session directory, or, for a driver killed inside ray.init before it was
        recorded, the candidates: Ray names a session `session_<date>_<driver pid>`."""
        if self.session_dir:
            return [self.session_dir]
        root = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray"
        found = root.glob(f"session_*_{self.driver_pid}")
        return [str(p) for p in found if p.stat().st_mtime >= self.driver_started - 1]

    @classmethod
    def load(cls, path: Path) -> Record:
        """Read a record written by `save`."""
        return cls(**json.loads(path.read_text()))


def records_dir() -> Path:
    """Where records live: next to Ray's own session directories."""
    return Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "gpgrid_drivers"


def is_alive(pid: int, started: float) -> bool:
    """True if process `pid` exists, is not a zombie, and is the one that started at `started`."""
    try:
        proc = psutil.Process(pid)
        same = abs(proc.create_time() - started) < 0.5
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def begin() -> Record:
    """Clean up after earlier killed drivers, then record this process as a cluster's driver."""
    reap_orphans()
    me = psutil.Process()
    record = Record(driver_pid=me.pid, driver_started=me.create_time(), token=secrets.token_hex(8))
    record.save()
    return record


@contextlib.contextmanager
def marked(record: Record) -> Iterator[None]:
    """Put the record's token into the environment that processes started inside inherit."""
    os.environ[MARKER_ENV] = record.token
    try:
        yield
    finally:
        os.environ.pop(MARKER_ENV, None)


def session_processes(token: str, session_dirs: list[str] | None = None) -> list[psutil.Process]:
    """Live processes (other than this one) of the cluster marked with `token`.

    A process belongs if its initial environment carries the token, or if it is named `ray::*`
    and holds a file open under one of `session_dirs`. The second rule is for the agents and
    workers: Ray's setproctitle may overwrite the memory that /proc/PID/environ shows, but each
    keeps its stdout/stderr open on the session's logs/. The name condition keeps, say, a
    `tail -f` on those logs out.
    """
    wanted = f"{MARKER_ENV}={token}".encode()
    prefixes = tuple(os.path.join(d, "") for d in session_dirs or [] if d)
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            with open(f"/proc/{proc.pid}/environ", "rb") as f:
                marked = wanted in f.read().split(b"\0")
            if marked or (prefixes and proc.name().startswith("ray::") and _holds(proc, prefixes)):
                found.append(proc)
        except (OSError, psutil.Error):  # gone, a zombie, or another user's
            continue
    return found


def _holds(proc: psutil.Process, prefixes: tuple[str, ...]) -> bool:
    """Whether `proc` has a file descriptor open on a path starting with one of `prefixes`."""
    fds = f"/proc/{proc.pid}/fd"
    for fd in os.listdir(fds):
        with contextlib.suppress(OSError):
            if os.readlink(f"{fds}/{fd}").startswith(prefixes):
                return True
    return False


def terminate(procs: list[psutil.Process], grace: float = GRACE_S) -> None:
    """SIGTERM `procs`, then SIGKILL whichever are still running after `grace` seconds."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    left = procs
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if _running(p)]
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def reap(record: Record) -> int:
    """End every process of the record's cluster and delete the record; how many were ended."""
    procs = session_processes(record.token, record.session_dirs())
    terminate(procs)
    record.remove()
    return len(procs)


def reap_orphans() -> None:
    """Reap clusters left by drivers that died with their watchdog (or before starting one)."""
    for path in sorted(records_dir().glob("*.json")):
        try:
            record = Record.load(path)
        except (OSError, ValueError, TypeError):
            continue  # being written, or not ours; leave it
        if not is_alive(record.driver_pid, record.driver_started) and (ended := reap(record)):
            log.warning(
                "ended %d Ray processes left by a killed run (driver pid %d, session %s)",
                ended,
                record.driver_pid,
                record.session_dir or "unknown",
            )


def start_watchdog(record: Record) -> None:
    """Start `python -m pipeline.reaper watch` for `record` in its own session; note its pid."""
    env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
    root = str(Path(__file__).resolve().parent.parent)  # so `pipeline` imports from any cwd
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    with open(record.path.with_suffix(".log"), "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.reaper", "watch", str(record.path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    record.watchdog_pid = proc.pid
    record.save()


def _raylet(token: str) -> psutil.Process | None:
    for proc in session_processes(token):
        with contextlib.suppress(psutil.Error):
            if proc.name() == "raylet":
                return proc
    return None


def watch(path: Path) -> None:
    """The watchdog: wait for the driver or the raylet to go, then reap the cluster."""
    record = Record.load(path)
    raylet = _raylet(record.token)
    while True:
        if not is_alive(record.driver_pid, record.driver_started):
            break
        if raylet is not None and not _running(raylet):
            time.sleep(SHUTDOWN_GRACE_S)
            break
        time.sleep(POLL_S)
    reap(record)


def main(argv: list[str]) -> int:
    """`python -m pipeline.reaper watch RECORD` (the watchdog) or `... reap` (orphans now)."""
    if argv[:1] == ["watch"] and len(argv) == 2:
        watch(Path(argv[1]))
        return 0
    if argv == ["reap"]:
        reap_orphans()
        return 0
    print("usage: python -m pipeline.reaper watch RECORD | reap", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
