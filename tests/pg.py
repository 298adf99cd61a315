"""A throwaway PostgreSQL cluster owned by the test run, and the ``engine`` fixture that runs a suite on both engines.

    from tests.pg import engine_fixture, new_db_fixture  # noqa: F401  (fixtures ``engine`` and ``new_db``)

    def test_something(new_db: str) -> None:   # a fresh SQLite file or a fresh PostgreSQL database
        store = Store.open(new_db)

The cluster is made with Debian's ``initdb`` (``/usr/lib/postgresql/*/bin``) in a temporary folder, listens on
loopback on a free port (its unix socket in the same folder), and is stopped and deleted when the test process
exits. As root the server runs as the ``postgres`` user (PostgreSQL refuses to run as root). Nothing is skipped:
without PostgreSQL installed the PostgreSQL tests fail, naming the package to install (``.ci/run`` installs it).

``Cluster`` is usable without pytest too (the scale benchmark starts one).
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ENGINES = ("sqlite", "postgresql")
SERVER_OPTIONS = ("-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
                  " -c shared_buffers=128MB")


def bindir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian layout), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One PostgreSQL server in a temporary folder. ``database()`` creates a fresh database and returns its URL."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="autolabel-pg-"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = free_port()
        self._user = "postgres" if os.geteuid() == 0 else None
        self._names = itertools.count(1)
        self._lock = threading.Lock()
        self.running = False

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self._user, "--", *args] if self._user else list(args)

    def start(self) -> Cluster:
        if self._user:
            pw = pwd.getpwnam(self._user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        subprocess.run(self._cmd(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                                 "-E", "UTF8", "--locale=C", "--no-sync"),
                       check=True, capture_output=True, text=True)
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 {SERVER_OPTIONS}"
        subprocess.run(self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
                                 "-w", "-t", "60", "start"), check=True, capture_output=True, text=True)
        self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            subprocess.run(self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                                     "stop"), capture_output=True)
            self.running = False
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def sql(self, statement: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    def database(self, template: str | None = None) -> str:
        """A new, empty database (or a copy of ``template``, which must have no open connections)."""
        with self._lock:
            name = f"t{os.getpid()}_{next(self._names)}"
        self.sql(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
        return self.url(name)


_cluster: Cluster | None = None


def cluster() -> Cluster:
    """The test process's cluster, started on first use and stopped at exit."""
    global _cluster
    if _cluster is None:
        found = bindir()
        if found is None:  # a failure, never a skip: CI must not go green without the PostgreSQL tests
            pytest.fail("PostgreSQL is not installed (apt-get install -y postgresql): the PostgreSQL tests need it",
                        pytrace=False)
        _cluster = Cluster(found).start()
        atexit.register(_cluster.stop)
    return _cluster


def dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


# -- fixtures ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session", name="pg")
def pg_fixture() -> Iterator[Cluster]:
    """The throwaway PostgreSQL cluster of this test run."""
    yield cluster()


@pytest.fixture(scope="session", params=ENGINES, name="engine")
def engine_fixture(request: pytest.FixtureRequest) -> str:
    """Run the requesting test once per engine."""
    return str(request.param)


@pytest.fixture(name="new_db")
def new_db_fixture(engine: str, tmp_path: Path) -> str:
    """A fresh, empty database of the current engine: a SQLite file path or a PostgreSQL URL."""
    return str(tmp_path / "store.db") if engine == "sqlite" else cluster().database()
