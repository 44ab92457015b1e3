"""Real servers for tests, started on 127.0.0.1 and always stopped: PostgreSQL and MLflow.

Use the fixtures from a test module by importing them (``tests/`` is on ``sys.path``)::

    from servers import mlflow_server, postgres_server, postgres_url  # noqa: F401  (pytest fixtures)

    def test_something(postgres_url, mlflow_server):
        ...  # postgres_url: "postgresql://ctbench:PW@127.0.0.1:PORT/DB"; mlflow_server.uri: "http://127.0.0.1:PORT"

Imported this way, a session fixture is set up once per importing module; to share one server
across modules, register the module instead with ``pytest_plugins = ["servers"]`` in
tests/conftest.py (and drop the imports).

- ``postgres_server`` (session): a PostgreSQL cluster in a temporary folder (``initdb`` then
  ``postgres`` as the ``postgres`` system user when the tests run as root: the server refuses
  root). ``postgres_server.create_database()`` returns the URL of a fresh, empty database.
- ``postgres_url`` (module): the URL of a fresh database on that server, one per test module.
- ``mlflow_server`` (module): ``mlflow server`` with a SQLite backend store and proxied artifacts
  (``--serve-artifacts``: clients upload through HTTP, no shared folder), in a temporary folder.

A missing binary or driver skips the test with one line naming what to install. The plain
context managers :func:`running_postgres` and :func:`running_mlflow`, and the helpers
:func:`free_port`, :func:`wait_until` and :func:`stop_process`, serve other services (a Dask
scheduler and its workers follow the same pattern: free port, start in a new session, poll
until ready with a deadline, stop the whole process group in a finaliser).
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

START_TIMEOUT_S = 120.0  # generous: a loaded 2-CPU CI machine starts mlflow server in ~20 s


# --- generic helpers ------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def log_tail(path: Path, chars: int = 2000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_until(ready: Callable[[], bool], what: str, timeout: float = START_TIMEOUT_S,
               proc: subprocess.Popen | None = None, log: Path | None = None, interval: float = 0.1) -> None:
    """Poll ``ready()`` until it returns True; fail (with the log's tail) when ``proc`` exits first
    or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except Exception:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready:\n{log_tail(log) if log else ''}")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s:\n{log_tail(log) if log else ''}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 15.0, group: bool = False) -> None:
    """Stop a server started by a test: ``sig`` first, SIGKILL after ``grace`` seconds. With
    ``group`` (a process started with ``start_new_session=True``) the whole process group is
    signalled, so worker processes it spawned go too."""
    if proc.poll() is not None and not group:
        return

    def send(s: int) -> None:
        try:
            if group:
                os.killpg(proc.pid, s)
            else:
                proc.send_signal(s)
        except (ProcessLookupError, PermissionError):
            pass

    send(sig)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(timeout=10)
    if group:  # children that outlived their leader
        send(signal.SIGKILL)


# --- PostgreSQL -------------------------------------------------------------------------------------

PG_INSTALL = "install PostgreSQL's server (Debian: apt-get install postgresql)"


def pg_binary(name: str) -> str | None:
    """A PostgreSQL server binary from PATH, else from Debian's /usr/lib/postgresql/<version>/bin (newest)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")

    def version(path: str) -> tuple:
        v = Path(path).parent.parent.name
        return tuple(int(p) if p.isdigit() else 0 for p in v.split("."))

    return max(candidates, key=version) if candidates else None


def postgres_missing() -> str | None:
    """Why a PostgreSQL server cannot be started here (one line), or None."""
    missing = [n for n in ("initdb", "postgres") if pg_binary(n) is None]
    if missing:
        return f"PostgreSQL binaries not found ({', '.join(missing)}): {PG_INSTALL}"
    try:  # the driver SQLAlchemy uses for postgresql:// URLs (psycopg under SQLAlchemy >= 2.1, else psycopg2)
        from sqlalchemy.engine import make_url

        make_url("postgresql://").get_dialect().import_dbapi()
    except ImportError as exc:
        return f"the PostgreSQL driver {exc.name or ''} is missing: pip install -e '.[cluster]' (psycopg[binary], psycopg2-binary)"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return f"running as root without a 'postgres' system user to run the server as: {PG_INSTALL} (it creates the user)"
    return None


@dataclass
class PostgresServer:
    """A running PostgreSQL cluster; ``url(db)`` is a password-authenticated TCP URL."""

    host: str
    port: int
    socket_dir: Path
    root: Path
    user: str = "ctbench"
    password: str = ""
    proc: subprocess.Popen | None = None
    databases: list[str] = field(default_factory=list)

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def admin(self, database: str = "postgres"):
        """A superuser connection over the unix socket (autocommit), with psycopg or psycopg2."""
        args = dict(host=str(self.socket_dir), port=self.port, user="postgres", dbname=database, connect_timeout=5)
        try:
            import psycopg
        except ImportError:
            import psycopg2 as psycopg
        conn = psycopg.connect(**args)
        conn.autocommit = True
        return conn

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database owned by the test user; returns its URL."""
        name = name or f"ctbench_{len(self.databases)}_{secrets.token_hex(3)}"
        with contextlib.closing(self.admin()) as conn, conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}" OWNER "{self.user}"')
        self.databases.append(name)
        return self.url(name)


def _as_server_user() -> dict:
    """Popen arguments that run a command as the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return {}
    import pwd

    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [], "env": {**_clean_env(), "HOME": str(pw.pw_dir)}}


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


@contextlib.contextmanager
def running_postgres(timeout: float = START_TIMEOUT_S) -> Iterator[PostgresServer]:
    """Start a throw-away PostgreSQL cluster on 127.0.0.1 (a free port), yield it, stop it and
    remove its files. Raises RuntimeError if it cannot start (see :func:`postgres_missing`)."""
    why = postgres_missing()
    if why:
        raise RuntimeError(why)
    initdb, postgres = pg_binary("initdb"), pg_binary("postgres")
    root = Path(tempfile.mkdtemp(prefix="ctbench-pg-"))
    run_as = _as_server_user()
    try:
        data, sock = root / "data", root / "sock"
        sock.mkdir()
        password = secrets.token_hex(12)
        pwfile = root / "superuser.pw"
        pwfile.write_text(secrets.token_hex(12) + "\n")
        if run_as:
            for p in (root, sock, pwfile):
                os.chown(p, run_as["user"], run_as["group"])
        env = run_as.get("env", _clean_env())
        popen_user = {k: v for k, v in run_as.items() if k != "env"}
        init = subprocess.run(
            [initdb, "-D", str(data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
             f"--pwfile={pwfile}", "--encoding=UTF8", "--no-locale", "--no-sync"],
            cwd=root, env=env, capture_output=True, text=True, timeout=timeout, **popen_user,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}): {(init.stderr or init.stdout)[-2000:]}")
        log = root / "postgres.log"
        port = free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [postgres, "-D", str(data), "-k", str(sock), "-h", "127.0.0.1", "-p", str(port),
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=200"],
                cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **popen_user,
            )
        server = PostgresServer(host="127.0.0.1", port=port, socket_dir=sock, root=root, password=password, proc=proc)
        try:
            def ready() -> bool:
                server.admin().close()
                return True

            wait_until(ready, "postgres", timeout, proc, log)
            with contextlib.closing(server.admin()) as conn, conn.cursor() as cur:
                cur.execute(f"CREATE ROLE \"{server.user}\" LOGIN PASSWORD '{password}'")
            yield server
        finally:
            stop_process(proc, signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- MLflow tracking server -------------------------------------------------------------------------


@dataclass
class MlflowServer:
    uri: str
    port: int
    root: Path
    backend_store_uri: str
    artifacts: Path
    proc: subprocess.Popen | None = None

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)


def mlflow_missing() -> str | None:
    try:
        import mlflow  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return f"mlflow's server is not installed ({exc.name}): pip install mlflow"
    return None


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200


@contextlib.contextmanager
def running_mlflow(timeout: float = START_TIMEOUT_S) -> Iterator[MlflowServer]:
    """Start ``mlflow server`` on 127.0.0.1 (a free port) with a SQLite backend store and
    artifacts served by the server (``--serve-artifacts``), both in a temporary folder; yield
    it once ``/health`` answers; stop its whole process group and remove its files."""
    why = mlflow_missing()
    if why:
        raise RuntimeError(why)
    root = Path(tempfile.mkdtemp(prefix="ctbench-mlflow-"))
    try:
        backend = f"sqlite:///{root / 'mlflow.db'}"
        artifacts = root / "artifacts"
        artifacts.mkdir()
        port = free_port()
        log = root / "mlflow.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runner and its seven huey consumers
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                 "--backend-store-uri", backend, "--serve-artifacts", "--artifacts-destination", str(artifacts),
                 "--workers", "1"],
                cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        try:
            uri = f"http://127.0.0.1:{port}"
            wait_until(lambda: _healthy(f"{uri}/health"), "mlflow server", timeout, proc, log, interval=0.25)
            yield MlflowServer(uri=uri, port=port, root=root, backend_store_uri=backend, artifacts=artifacts, proc=proc)
        finally:
            stop_process(proc, signal.SIGTERM, group=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- pytest fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session (skips with what to install when unavailable)."""
    why = postgres_missing()
    if why:
        pytest.skip(why)
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh database (one per test module) on the session's PostgreSQL server,
    e.g. ``postgresql://ctbench:PW@127.0.0.1:PORT/ctbench_0_ab12cd``."""
    return postgres_server.create_database()


@pytest.fixture(scope="module")
def mlflow_server() -> Iterator[MlflowServer]:
    """A real ``mlflow server`` for one test module: ``.uri`` is its http URL (set it as
    MLFLOW_TRACKING_URI of the processes under test), ``.client()`` an MlflowClient on it."""
    why = mlflow_missing()
    if why:
        pytest.skip(why)
    with running_mlflow() as server:
        yield server
