"""Submit job specs to a Ray cluster's job server, and query, follow and stop them.

A submitted job runs `gpgrid run job.yaml` on the cluster, where job.yaml is the spec with
its paths made absolute: they must be visible from the cluster's nodes. Its submission id
comes from the spec, so submitting the same spec twice is refused instead of run twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import aiohttp
import requests
import typer
from ray.exceptions import AuthenticationError
from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient

from jobs.spec import JobSpec, load_spec
from pipeline.errors import InputError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
ENTRYPOINT = "gpgrid run job.yaml --no-progress"
DEFAULT_TIMEOUT_S = 24 * 3600.0
POLL_S = 0.5
FAILED_LOG_LINES = 30
SUBMISSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class SubmissionExistsError(InputError):
    """The cluster already holds a job with this submission id (the same spec, run before)."""


class UnknownJobError(InputError):
    """The cluster holds no job with this submission id."""


class JobFailedError(RuntimeError):
    """A job that ended FAILED or STOPPED; `logs_tail` holds its last log lines."""

    def __init__(self, message: str, logs_tail: str) -> None:
        super().__init__(f"{message}\nlast log lines:\n{logs_tail}")
        self.logs_tail = logs_tail


class ClusterUnreachableError(ConnectionError):
    """The job server cannot be reached, or it refused our authentication token."""


def resolve_address(address: str | None = None) -> str:
    """The job server URL: `address`, else RAY_API_SERVER_ADDRESS, else an http RAY_ADDRESS.

    Else the local default. A RAY_ADDRESS like 10.0.0.1:6379 names a GCS, not a job server.
    """
    ray_address = os.environ.get("RAY_ADDRESS", "")
    http_ray_address = ray_address if ray_address.startswith(("http://", "https://")) else ""
    chosen = address or os.environ.get("RAY_API_SERVER_ADDRESS") or http_ray_address
    chosen = (chosen or DEFAULT_ADDRESS).rstrip("/")
    return chosen if "://" in chosen else f"http://{chosen}"


def default_submission_id(spec: JobSpec) -> str:
    """`gpgrid-<output name>-<12 hex of the resolved spec's hash>`: same job, same id."""
    digest = hashlib.sha256(spec.to_yaml().encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(spec.output.path).stem).strip("-.") or "job"
    return f"gpgrid-{name}-{digest}"


def submit_job(
    spec_path: Path,
    address: str | None = None,
    submission_id: str | None = None,
    wait: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> str:
    """Validate a spec and submit it as a Ray job; returns its submission id.

    With `wait`, return once the job has succeeded (JobFailedError when it fails or is stopped).
    """
    spec_path = Path(spec_path)
    spec, _ = load_spec(spec_path)
    job_id = submission_id or default_submission_id(spec)
    if not SUBMISSION_ID.fullmatch(job_id):
        raise InputError(
            f"submission id {job_id!r} has characters a job URL cannot hold: use letters, "
            "digits, '.', '_' and '-', starting with a letter or digit"
        )
    address = resolve_address(address)
    with _job_server(address) as client:
        _refuse_existing(client, address, job_id)
        with tempfile.TemporaryDirectory(prefix="gpgrid-submit-") as folder:
            (Path(folder) / "job.yaml").write_text(_job_yaml(spec, spec_path))
            try:
                client.submit_job(
                    entrypoint=ENTRYPOINT,
                    submission_id=job_id,
                    runtime_env={"working_dir": folder},
                    metadata={
                        "gpgrid_spec": str(spec_path.resolve()),
                        "gpgrid_output": spec.output.path,
                    },
                )
            except RuntimeError as err:
                if "already exists" not in str(err):
                    raise
                _refuse_existing(client, address, job_id)  # submitted by someone else meanwhile
                raise
    if wait:
        wait_for_job(address, job_id, timeout_s)
    return job_id


def _job_yaml(spec: JobSpec, spec_path: Path) -> str:
    """The spec the cluster runs: validated, with absolute paths, naming the file it came from."""
    return (
        f"# {spec_path.resolve()}, as submitted by gpgrid (paths made absolute)\n{spec.to_yaml()}"
    )


def _refuse_existing(client: JobSubmissionClient, address: str, job_id: str) -> None:
    """Refuse a submission id the cluster already holds, naming its status and the fix."""
    try:
        info = _job_info(client, address, job_id)
    except UnknownJobError:
        return
    raise SubmissionExistsError(
        f"a job with submission id {job_id} already exists at {address} (status "
        f"{info.status.value}): see it with `gpgrid status {job_id} --address {address}` and "
        f"`gpgrid logs {job_id} --address {address}`; to run again, change the spec or pass "
        "--submission-id with a new id"
    )


def wait_for_job(
    address: str | None, submission_id: str, timeout_s: float = DEFAULT_TIMEOUT_S
) -> str:
    """Poll until the job ends; returns its status line, or raises JobFailedError with its logs."""
    address = resolve_address(address)
    deadline = time.monotonic() + timeout_s
    with _job_server(address) as client:
        while not (info := _job_info(client, address, submission_id)).status.is_terminal():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {submission_id} at {address} is still {info.status.value} after "
                    f"{timeout_s:g} s; it keeps running: follow it with `gpgrid logs "
                    f"{submission_id} --follow --address {address}` or end it with `gpgrid stop "
                    f"{submission_id} --address {address}`"
                )
            time.sleep(POLL_S)
        if info.status != JobStatus.SUCCEEDED:
            lines = client.get_job_logs(submission_id).splitlines()[-FAILED_LOG_LINES:]
            raise JobFailedError(
                f"job {submission_id} at {address} ended {_status_line(info)}; whole log: "
                f"`gpgrid logs {submission_id} --address {address}`",
                "\n".join(lines),
            )
    return _status_line(info)


def job_status(address: str | None, submission_id: str) -> str:
    """The job's status and Ray's message about it, e.g. `SUCCEEDED: Job finished successfully.`"""
    address = resolve_address(address)
    with _job_server(address) as client:
        return _status_line(_job_info(client, address, submission_id))


def _status_line(info: JobDetails) -> str:
    """`STATUS: message`, the message cut before the log excerpt Ray appends to failures."""
    message = (info.message or "").partition("\n")[0].partition(", last available logs")[0]
    return f"{info.status.value}: {message}" if message else info.status.value


def job_logs(address: str | None, submission_id: str, follow: bool = False) -> Iterator[str]:
    """The job's logs: all of them at once, or (`follow`) chunks as they come until the job ends."""
    address = resolve_address(address)
    with _job_server(address) as client:
        _job_info(client, address, submission_id)
        if not follow:
            yield client.get_job_logs(submission_id)
            return
        yield from _tail(client, submission_id)


def _tail(client: JobSubmissionClient, submission_id: str) -> Iterator[str]:
    """Drive the client's async log tail (a websocket closed when the job ends) synchronously."""
    loop = asyncio.new_event_loop()
    chunks = client.tail_job_logs(submission_id)
    try:
        while True:
            try:
                yield loop.run_until_complete(anext(chunks))
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(chunks.aclose())
        loop.close()


def stop_job(address: str | None, submission_id: str) -> bool:
    """Ask a job to stop; True if it was still running, False if it had already ended."""
    address = resolve_address(address)
    with _job_server(address) as client:
        _job_info(client, address, submission_id)
        return client.stop_job(submission_id)


def _job_info(client: JobSubmissionClient, address: str, submission_id: str) -> JobDetails:
    """The job's details, or UnknownJobError naming the id, the address and how to list jobs."""
    try:
        return client.get_job_info(submission_id)
    except RuntimeError as err:
        if "status code 404" not in str(err):
            raise
    raise UnknownJobError(
        f"no job with submission id {submission_id} at address {address}: list jobs with "
        f"`ray job list --address {address}`"
    )


@contextmanager
def _job_server(address: str) -> Iterator[JobSubmissionClient]:
    """A job client for `address`; connection and token failures become messages with the fix."""
    try:
        with _without_env("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):  # they override `address`
            client = JobSubmissionClient(address, headers=_auth_headers())
        yield client
    except (ConnectionError, requests.ConnectionError, aiohttp.ClientConnectionError) as err:
        raise ClusterUnreachableError(
            f"cannot reach a Ray job server at {address}: start a head with `ray start --head` "
            f"(its job server listens on {DEFAULT_ADDRESS}), or pass --address with the URL of "
            "the head's dashboard"
        ) from err
    except AuthenticationError as err:
        raise ClusterUnreachableError(
            f"the Ray cluster at {address} refused our token ({err}): get the cluster's token "
            "with `ray get-auth-token` on its head and put it in ~/.ray/auth_token here, or set "
            "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, a file holding it)"
        ) from err


def _auth_headers() -> dict[str, str]:
    """The Ray token as an Authorization header, wherever Ray finds one, unless auth is disabled.

    Ray's own client sends a token only when RAY_AUTH_MODE=token, but `ray start --head` turns
    token auth on whenever a token exists (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token), so we send it likewise; a cluster without token auth ignores it.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    from ray._raylet import AuthenticationTokenLoader

    return AuthenticationTokenLoader.instance().get_token_for_http_header(ignore_auth_mode=True)


@contextmanager
def _without_env(*names: str) -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


# The commands; jobs/cli.py registers them as `gpgrid submit`, `status`, `logs` and `stop`.

AddressOption = Annotated[
    str | None,
    typer.Option(
        help="Ray job server (the head's dashboard URL); default: RAY_API_SERVER_ADDRESS, "
        f"RAY_ADDRESS when it is an http URL, else {DEFAULT_ADDRESS}"
    ),
]
IdArgument = Annotated[str, typer.Argument(help="submission id, as printed by gpgrid submit")]


def submit_command(
    spec: Annotated[
        Path, typer.Argument(help="job spec (YAML); its paths must be visible to the cluster")
    ],
    address: AddressOption = None,
    submission_id: Annotated[
        str | None,
        typer.Option(help="job id; default: gpgrid-<output name>-<hash of the spec>"),
    ] = None,
    wait: Annotated[bool, typer.Option(help="wait for the job to end; exit 1 if it fails")] = False,
    timeout: Annotated[
        float, typer.Option(help="with --wait: seconds to wait before giving up (the job goes on)")
    ] = DEFAULT_TIMEOUT_S,
) -> None:
    """Submit a job spec to a Ray cluster's job server, to run there as `gpgrid run`.

    The same spec gets the same submission id, so a second submission is refused.
    """
    _quiet_ray_client()
    where = resolve_address(address)
    try:
        job_id = submit_job(spec, where, submission_id)
        typer.echo(
            f"submitted {job_id} to {where}; follow with: "
            f"gpgrid logs {job_id} --follow --address {where}"
        )
        if wait:
            typer.echo(f"{job_id} {wait_for_job(where, job_id, timeout)}")
    except Exception as err:  # noqa: BLE001 - every error becomes a message and an exit code
        _exit(err)


def status_command(submission_id: IdArgument, address: AddressOption = None) -> None:
    """Show a submitted job's status: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    _quiet_ray_client()
    where = resolve_address(address)
    try:
        typer.echo(f"{submission_id} at {where}: {job_status(where, submission_id)}")
    except Exception as err:  # noqa: BLE001
        _exit(err)


def logs_command(
    submission_id: IdArgument,
    address: AddressOption = None,
    follow: Annotated[
        bool, typer.Option(help="keep printing new output until the job ends")
    ] = False,
) -> None:
    """Print a submitted job's output (the `gpgrid run` it runs on the cluster)."""
    _quiet_ray_client()
    try:
        for chunk in job_logs(resolve_address(address), submission_id, follow=follow):
            typer.echo(chunk, nl=False)
    except Exception as err:  # noqa: BLE001
        _exit(err)


def stop_command(submission_id: IdArgument, address: AddressOption = None) -> None:
    """Stop a submitted job; its written tiles stay: a new --submission-id resumes it."""
    _quiet_ray_client()
    where = resolve_address(address)
    try:
        if stop_job(where, submission_id):
            typer.echo(
                f"asked {submission_id} at {where} to stop; check with: "
                f"gpgrid status {submission_id} --address {where}"
            )
        else:
            typer.echo(
                f"{submission_id} at {where} had already ended: {job_status(where, submission_id)}"
            )
    except Exception as err:  # noqa: BLE001
        _exit(err)


def _quiet_ray_client() -> None:
    """Keep Ray's client INFO lines (package uploads, websocket closes) out of command output."""
    for name in (
        "ray.dashboard.modules.dashboard_sdk",
        "ray.dashboard.modules.job.sdk",
        "ray._private.runtime_env.packaging",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


def _exit(err: Exception) -> NoReturn:
    """Report an error as jobs/cli.py does: exit 2 for bad input, 1 for failures."""
    from jobs.cli import _fail  # jobs.cli imports this module

    _fail(err)
