import socket

from django.conf import settings
from django.db import connection

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


def test_redis_answers_ping_on_its_port():
    status = embedded.redis_status(settings.VAR_DIR)
    port = int(status.url.rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(16).startswith(b"+PONG")


def test_nothing_embedded_is_wanted_when_urls_are_set():
    env = {"DATABASE_URL": "postgres://x@db/y", "CELERY_BROKER_URL": "redis://r:6379/0"}
    assert embedded.wanted(env) == {"postgres": False, "redis": False}
    assert embedded.services_status(settings.VAR_DIR, env=env) == []


def test_unusable_data_dir_gives_a_clear_error(tmp_path):
    bogus = tmp_path / "postgres" / "data"
    bogus.mkdir(parents=True)
    (bogus / "stray.txt").write_text("not a cluster")
    try:
        embedded._pg_init(bogus.parent, {})
    except embedded.ServiceError as exc:
        assert "not a PostgreSQL data directory" in str(exc)
    else:
        raise AssertionError("expected ServiceError")
