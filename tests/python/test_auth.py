"""Passwords and TLS: a server configured with scram-sha-256 users and a
required TLS certificate (docs/config.example.toml, [frontend]) lets the
right password in over TLS (sslmode=require and verify-full), rejects a
wrong password or an unknown user with 28P01 and the same message, and
refuses unencrypted connections."""

from __future__ import annotations

import asyncio
import subprocess

import asyncpg
import psycopg
import pytest


def make_certificate(directory):
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture
def secured(quiver_factory, tmp_path):
    cert, key = make_certificate(tmp_path)
    config = tmp_path / "quiver.toml"
    config.write_text(
        f"""
[frontend]
auth = "scram-sha-256"
users = [{{ name = "postgres", password = "pg-secret" }}, {{ name = "alice", password = "wonder land" }}]

[frontend.tls]
cert = "{cert}"
key = "{key}"
required = true
"""
    )
    server = quiver_factory(extra_args=["--config", str(config)], start=False)
    server.client_options = dict(password="pg-secret", sslmode="require")
    server.start()
    server.cert = cert
    return server


def failure(server, **options):
    conninfo = {**server.conninfo(), **server.client_options, **options}
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(**conninfo, connect_timeout=10).close()
    return str(e.value)


def test_right_password_over_tls(secured):
    with secured.connect() as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # verify-full: the certificate must chain to the given root and name the host.
    with psycopg.connect(
        host="localhost", port=secured.port, user="alice", password="wonder land",
        dbname="postgres", sslmode="verify-full", sslrootcert=str(secured.cert),
    ) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("alice",)
    # psql too.
    out = subprocess.run(
        ["psql", "-X", "-At", "-c", "SELECT 40 + 2",
         f"host=127.0.0.1 port={secured.port} user=postgres dbname=postgres sslmode=require"],
        capture_output=True, text=True, timeout=60, env={"PGPASSWORD": "pg-secret", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"


def test_wrong_password_and_unknown_user_are_rejected_alike(secured):
    wrong = failure(secured, password="not-it")
    assert 'password authentication failed for user "postgres"' in wrong
    unknown = failure(secured, user="mallory", password="pg-secret")
    assert 'password authentication failed for user "mallory"' in unknown
    assert "does not exist" not in unknown

    async def sqlstate(user, password):
        try:
            conn = await asyncpg.connect(
                host="127.0.0.1", port=secured.port, user=user, password=password,
                database="postgres", ssl="require",
            )
        except asyncpg.PostgresError as e:
            return e.sqlstate
        await conn.close()
        return None

    assert asyncio.run(sqlstate("postgres", "not-it")) == "28P01"
    assert asyncio.run(sqlstate("mallory", "x")) == "28P01"
    assert asyncio.run(sqlstate("postgres", "pg-secret")) is None


def test_tls_is_required(secured):
    message = failure(secured, sslmode="disable")
    assert "no encryption" in message
    # The server is still fine afterwards.
    with secured.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_roles_made_in_sql_log_in_and_survive_a_restart(secured):
    def login(user, password):
        conninfo = {**secured.conninfo(), **secured.client_options, "user": user, "password": password}
        with psycopg.connect(**conninfo, connect_timeout=10) as conn:
            return conn.execute("SELECT 1").fetchone()[0]

    with secured.connect() as admin:
        admin.execute("CREATE ROLE bob LOGIN PASSWORD 'builder'")
        admin.execute("CREATE ROLE carol WITH LOGIN PASSWORD 'c4rol'")
        admin.execute("CREATE ROLE readers")  # no LOGIN: cannot connect
        with pytest.raises(psycopg.errors.DuplicateObject):
            admin.execute("CREATE ROLE bob")
        admin.execute("CREATE ROLE IF NOT EXISTS bob")
        roles = [r[0] for r in admin.execute("SELECT rolname FROM pg_catalog.pg_roles ORDER BY rolname")]
        assert {"bob", "carol", "readers", "postgres"} <= set(roles)
    assert login("bob", "builder") == 1
    assert "password authentication failed" in failure(secured, user="readers", password="anything")
    with secured.connect() as admin:
        admin.execute("ALTER ROLE bob WITH PASSWORD 'b2'")
    assert "password authentication failed" in failure(secured, user="bob", password="builder")
    assert login("bob", "b2") == 1
    secured.kill()
    secured.start()
    assert login("bob", "b2") == 1
    assert login("carol", "c4rol") == 1
    with secured.connect() as admin:
        admin.execute("DROP ROLE bob")
        with pytest.raises(psycopg.errors.UndefinedObject):
            admin.execute("DROP ROLE bob")
        admin.execute("DROP ROLE IF EXISTS bob")
    assert "password authentication failed" in failure(secured, user="bob", password="b2")
