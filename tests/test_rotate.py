"""Secret rotation end to end: the real CLI, real Docker and compose, real Caddy, and the Postgres
stand-in initialised like supabase/postgres (its roles, then the template's roles.sql and jwt.sql).

Supabase's service images cannot be pulled here: every service but the database is the stand-in
HTTP server (tests/world/standin.py), so "healthy" means the containers came up with the new
.env; what the rotation must change inside the database (role passwords, app.settings.jwt_secret,
Supavisor's stored tenant) is checked in a real PostgreSQL. Supavisor itself does not run: its
tenant table is made here with the columns its migrations give it.

One instance of the 2025-07-15 template (it keeps JWT_SECRET in the database and runs Supavisor)
serves the whole module.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from secrets import token_hex

import jwt
import pytest

from tests.world.caddy import CaddyProcess
from tests.world.cli import CliRoot
from tests.world.dockerworld import DockerSandbox
from tests.world.standin import write_standin_overlay
from tests.world.templates import fixtures_dir

pytestmark = pytest.mark.docker

NAME = "rot"
TEMPLATE = "2025-07-15"
# The roles supabase/postgres (migrate.sh) and the template's roles.sql give POSTGRES_PASSWORD.
PASSWORD_ROLES = (
    "supabase_admin",
    "postgres",
    "authenticator",
    "pgbouncer",
    "supabase_auth_admin",
    "supabase_functions_admin",
    "supabase_storage_admin",
)
# `env set` with this password makes meta's healthcheck fail (see the fixture): a forced failure.
FAILING_PASSWORD = "f41lf41lf41lf41lf41lf41l"


class World(CliRoot):
    def values(self) -> dict[str, str]:
        out = {}
        for line in (self.root / "instances" / NAME / ".env").read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                out[key] = value
        return out

    def journal(self) -> Path:
        return self.root / "rotate" / f"{NAME}.json"


def db_container() -> str:
    return f"{NAME}-db"


def psql(sql: str, database: str = "postgres") -> str:
    proc = subprocess.run(
        [
            *("docker", "exec", db_container(), "psql", "-X", "-U", "postgres", "-d", database),
            *("-v", "ON_ERROR_STOP=1", "-tAc", sql),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def logins(password: str, roles=PASSWORD_ROLES) -> dict[str, bool]:
    """Which roles log in over TCP (scram) with ``password`` (kept off every argv)."""
    script = (
        'for u in "$@"; do if psql -X -h 127.0.0.1 -U "$u" -d postgres -tAc "select 1" '
        '>/dev/null 2>&1; then echo "$u yes"; else echo "$u no"; fi; done'
    )
    proc = subprocess.run(
        ["docker", "exec", "-e", "PGPASSWORD", db_container(), "sh", "-c", script, "sh", *roles],
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": password},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return {line.split()[0]: line.split()[1] == "yes" for line in proc.stdout.splitlines()}


def all_log_in(password: str) -> bool:
    return all(logins(password).values())


def none_log_in(password: str) -> bool:
    return not any(logins(password).values())


def jwt_setting() -> str:
    return psql(
        "select s from pg_db_role_setting d join pg_database b on b.oid = d.setdatabase, "
        "unnest(d.setconfig) s where b.datname = 'postgres' and s like 'app.settings.jwt_secret=%'"
    ).partition("=")[2]


def failing_healthcheck(path: Path) -> Path:
    """A compose file layered after the stand-in overlay: meta turns unhealthy when its
    database password is FAILING_PASSWORD."""
    path.write_text(
        "services:\n"
        "  meta:\n"
        "    healthcheck: !override\n"
        '      test: [CMD-SHELL, \'test "$$PG_META_DB_PASSWORD" != ' + FAILING_PASSWORD + "']\n"
        "      interval: 1s\n"
        "      retries: 2\n"
    )
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, docker_client):
    base = tmp_path_factory.mktemp("rotate")
    root = base / "root"
    root.mkdir()
    with DockerSandbox(docker_client).session():
        caddy = CaddyProcess(root, base / "caddy-run")
        caddy.start()
        try:
            w = World(root, caddy)
            w.run("template", "import", str(fixtures_dir() / TEMPLATE), "--name", TEMPLATE)
            template = root / "templates" / TEMPLATE
            overlay = write_standin_overlay([template / "docker-compose.yml"], base / "standin.yml")
            failing = failing_healthcheck(base / "failing.yml")
            w.run(
                "create",
                NAME,
                "--template",
                TEMPLATE,
                "--extra-compose",
                str(overlay),
                "--extra-compose",
                str(failing),
            )
            yield w
        finally:
            caddy.stop()


# --- the test world: the stand-in initialises like supabase/postgres -----------------------------
def test_standin_database_has_supabase_roles_with_the_env_password(world):
    password = world.values()["POSTGRES_PASSWORD"]
    assert logins(password) == dict.fromkeys(PASSWORD_ROLES, True)
    assert none_log_in("not-" + password)
    roles = set(psql("select rolname from pg_roles").split())
    assert {"anon", "authenticated", "service_role", "dashboard_user"} <= roles
    assert {"supabase_replication_admin", "supabase_read_only_user"} <= roles
    # jwt.sql of this template stored JWT_SECRET; webhooks.sql made its schema (pg_net stub).
    assert jwt_setting() == world.values()["JWT_SECRET"]
    assert psql("select to_regprocedure('supabase_functions.http_request()') is not null") == "t"
    assert psql("select 1 from pg_database where datname = '_supabase'") == "1"


# --- rotate -----------------------------------------------------------------------------------
def test_dry_run_shows_the_plan_and_changes_nothing(world):
    before = world.values()
    proc = world.run("--json", "rotate", NAME, "POSTGRES_PASSWORD", "JWT_SECRET", "--dry-run")
    plan = json.loads(proc.stdout)
    assert plan["dry_run"] is True
    by_secret = {s["secret"]: s for s in plan["secrets"]}
    sql = "\n".join(by_secret["POSTGRES_PASSWORD"]["sql"])
    for role in PASSWORD_ROLES:
        assert f"ALTER ROLE {role} WITH PASSWORD '********'" in sql
    assert any("app.settings.jwt_secret" in s for s in by_secret["JWT_SECRET"]["sql"])
    assert {"db", "auth", "rest", "supavisor"} <= set(plan["services"])
    assert plan["client_keys"] == ["ANON_KEY", "SERVICE_ROLE_KEY"]
    for value in (before["POSTGRES_PASSWORD"], before["JWT_SECRET"]):
        assert value not in proc.stdout and value not in proc.stderr
    assert world.values() == before
    assert all_log_in(before["POSTGRES_PASSWORD"])


def test_password_and_jwt_rotation_reach_every_role_the_pooler_and_the_keys(world):
    """One rotation of both secrets the database holds (as a user rotating after a leak would):
    the password of every role, Supavisor's stored tenant, app.settings.jwt_secret and the
    client keys re-signed, the services recreated with them."""
    before = world.values()
    old = before["POSTGRES_PASSWORD"]
    # Supavisor's stored tenant (its schema from Supavisor's migrations; no Supavisor runs here).
    tenant = before["POOLER_TENANT_ID"]
    psql(
        "create table if not exists _supavisor.tenants (id uuid primary key default "
        "gen_random_uuid(), external_id text unique not null, db_host text);"
        f"insert into _supavisor.tenants (external_id, db_host) values ('{tenant}', 'db') "
        "on conflict do nothing",
        "_supabase",
    )
    # A database webhook holding the service key as a trigger argument (as Studio makes them).
    psql(
        "create table if not exists public.orders (id int);"
        "drop trigger if exists notify_orders on public.orders;"
        "create trigger notify_orders after insert on public.orders for each row execute "
        "function supabase_functions.http_request('http://hook.example/x', 'POST', "
        f"'{{\"Authorization\": \"Bearer {before['SERVICE_ROLE_KEY']}\"}}', '{{}}', '1000')"
    )
    proc = world.run("rotate", NAME, "POSTGRES_PASSWORD", "JWT_SECRET")
    after = world.values()
    # POSTGRES_PASSWORD: every role, the pooler's tenant (Supavisor re-makes it from the env).
    new = after["POSTGRES_PASSWORD"]
    assert new != old and len(new) >= 32
    assert logins(new) == dict.fromkeys(PASSWORD_ROLES, True)
    assert none_log_in(old)
    assert psql("select count(*) from _supavisor.tenants", "_supabase") == "0"
    assert "rotated POSTGRES_PASSWORD" in proc.stdout and "recreated:" in proc.stdout
    # JWT_SECRET: in the database too, and the client keys re-signed with it alone.
    assert after["JWT_SECRET"] != before["JWT_SECRET"]
    assert jwt_setting() == after["JWT_SECRET"]
    for key, role in (("ANON_KEY", "anon"), ("SERVICE_ROLE_KEY", "service_role")):
        claims = jwt.decode(after[key], after["JWT_SECRET"], algorithms=["HS256"])
        assert claims["role"] == role
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(after[key], before["JWT_SECRET"], algorithms=["HS256"])
        assert after[key] != before[key]
    assert "client keys changed: ANON_KEY, SERVICE_ROLE_KEY" in proc.stdout
    assert "SERVICE_ROLE_KEY: trigger notify_orders on orders" in proc.stderr
    secrets = [old, new, before["SERVICE_ROLE_KEY"], before["JWT_SECRET"], after["JWT_SECRET"]]
    for text in (proc.stdout, proc.stderr, (world.root / "audit.log").read_text()):
        assert not [s for s in secrets if s in text]
    assert not world.journal().exists()
    # The services were recreated with them: the auth container's env has the new values.
    env = subprocess.run(
        ["docker", "exec", f"{NAME}-auth", "env"], capture_output=True, text=True
    ).stdout
    assert new in env and old not in env
    assert after["JWT_SECRET"] in env and before["JWT_SECRET"] not in env


def test_a_failed_health_check_puts_the_old_password_back(world):
    old = world.values()["POSTGRES_PASSWORD"]
    proc = world.run(
        "env",
        NAME,
        "set",
        f"POSTGRES_PASSWORD={FAILING_PASSWORD}",
        check=False,
        env={"SUPABASE_MANAGER_WAIT_TIMEOUT": "20"},
    )
    assert proc.returncode == 1
    assert "the old values are back everywhere" in proc.stderr
    assert FAILING_PASSWORD not in proc.stderr
    assert world.values()["POSTGRES_PASSWORD"] == old
    assert all_log_in(old)
    assert none_log_in(FAILING_PASSWORD)
    assert not world.journal().exists()


def test_dashboard_password_goes_live_to_caddy_without_a_restart(world):
    pid = world.caddy.pid
    user = world.values()["DASHBOARD_USERNAME"]
    old = world.values()["DASHBOARD_PASSWORD"]
    host = f"{NAME}-studio.sbm.test"
    assert world.caddy.get(host, auth=(user, old)).status_code == 200
    world.run("rotate", NAME, "DASHBOARD_PASSWORD")
    new = world.values()["DASHBOARD_PASSWORD"]
    assert new != old
    assert world.caddy.get(host, auth=(user, new)).status_code == 200
    assert world.caddy.get(host, auth=(user, old)).status_code == 401
    assert world.caddy.pid == pid


def test_secrets_that_cannot_be_rotated_in_place_are_refused_plainly(world):
    before = world.values()
    proc = world.run("rotate", NAME, "ANON_KEY", check=False)
    assert proc.returncode == 2 and "rotate JWT_SECRET" in proc.stderr
    proc = world.run("rotate", NAME, "PGSODIUM_ROOT_KEY", check=False)
    assert proc.returncode == 2 and "not rotated" in proc.stderr
    proc = world.run("rotate", NAME, "NO_SUCH", check=False)
    assert proc.returncode == 2
    assert world.values() == before


# --- SIGKILL at each step, then the next command converges ---------------------------------------
# Each case leaves the instance converged and healthy, so the next one runs on it. Every kill
# point and both converging commands (`rotate`, `start`) are covered, on both sides; the kill at
# "database" then `start` runs on the worker (tests/test_remote_rotate.py). `env set
# POSTGRES_PASSWORD=` goes through the same rotation: one case kills that, and its chosen value
# must be the one everywhere after.
@pytest.mark.parametrize(
    ("step", "then", "side", "how"),
    [
        ("journal", "rotate", "old", "rotate"),
        ("journal", "start", "old", "rotate"),
        ("pooler", "rotate", "new", "rotate"),
        ("env", "start", "new", "env set"),
        ("recreate", "rotate", "new", "rotate"),
    ],
)
def test_killed_rotation_converges(world, step, then, side, how):
    old = world.values()["POSTGRES_PASSWORD"]
    chosen = token_hex(18)
    command = (
        ("rotate", NAME, "POSTGRES_PASSWORD")
        if how == "rotate"
        else ("env", NAME, "set", f"POSTGRES_PASSWORD={chosen}")
    )
    killed = world.run(*command, check=False, env={"SUPABASE_MANAGER_FAULT": f"rotate:{step}"})
    assert killed.returncode == -9, killed.stderr
    assert world.journal().exists()
    new = json.loads(world.journal().read_text())["new"]["POSTGRES_PASSWORD"]
    if how == "env set":
        assert new == chosen
    world.run(then, NAME)
    assert not world.journal().exists()
    value = world.values()["POSTGRES_PASSWORD"]
    assert value == (new if side == "new" else old)
    assert all_log_in(value)
    assert none_log_in(old if side == "new" else new)


# --- the pure parts, no container -------------------------------------------------------------
def test_scram_verifier_matches_only_its_password():
    from controller.pgroles import scram_matches, scram_verifier

    verifier = scram_verifier("s3cret-value")
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    assert scram_matches("s3cret-value", verifier)
    assert not scram_matches("s3cret-valuf", verifier)
    assert not scram_matches("s3cret-value", "md5abcdef")
    # RFC 7677's test vector: user "user", password "pencil", salt and 4096 iterations.
    import base64

    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    assert scram_verifier("pencil", salt).split("$", 2)[2] == (
        "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
    )


@pytest.mark.parametrize("version", ["v0.8.2", "2025-07-15"])
def test_roles_come_from_the_templates_roles_sql(version):
    from controller.pgroles import roles_from_scripts

    text = (fixtures_dir() / version / "volumes" / "db" / "roles.sql").read_text()
    assert roles_from_scripts([text]) == [
        "authenticator",
        "pgbouncer",
        "supabase_auth_admin",
        "supabase_functions_admin",
        "supabase_storage_admin",
    ]
    assert roles_from_scripts([text], "JWT_SECRET") == []


def _new_style_env() -> dict[str, str]:
    from controller import secrets

    keys = ["JWT_SECRET", "ANON_KEY", "SERVICE_ROLE_KEY", *secrets.NEW_STYLE_KEYS]
    return secrets.generate_secrets(keys)


def test_jwt_keys_rotation_is_graceful_then_finished():
    from controller import rotation
    from controller.envpolicy import check_text
    from controller.secrets import verify_with_jwks

    facts = rotation.DbFacts(roles=[], jwt_in_db=False, pooler=False)
    env = _new_style_env()
    step = rotation.prepare("JWT_KEYS", env, facts, now=int(time.time()))
    rotated = {**env, **step.new_env}
    assert rotated["ANON_KEY_ASYMMETRIC"] != env["ANON_KEY_ASYMMETRIC"]
    # New tokens verify; tokens signed with the old key still do (its public key stays).
    assert verify_with_jwks(rotated["ANON_KEY_ASYMMETRIC"], rotated["JWT_JWKS"], "anon")
    assert verify_with_jwks(env["SERVICE_ROLE_KEY_ASYMMETRIC"], rotated["JWT_JWKS"], "service_role")
    signing = [k for k in json.loads(rotated["JWT_KEYS"]) if "sign" in k.get("key_ops", [])]
    assert len(signing) == 1
    assert check_text("".join(f"{k}={v}\n" for k, v in rotated.items())) == []
    done = rotation.prepare("JWT_KEYS", rotated, facts, now=int(time.time()), finish=True)
    finished = {**rotated, **done.new_env}
    assert verify_with_jwks(rotated["ANON_KEY_ASYMMETRIC"], finished["JWT_JWKS"], "anon")
    assert not verify_with_jwks(env["SERVICE_ROLE_KEY_ASYMMETRIC"], finished["JWT_JWKS"])
    with pytest.raises(Exception, match="no previous key"):
        rotation.prepare("JWT_KEYS", finished, facts, now=int(time.time()), finish=True)


def test_jwt_secret_rotation_carries_the_new_secret_into_the_jwks():
    from controller import rotation

    env = _new_style_env()
    facts = rotation.DbFacts(roles=[], jwt_in_db=True, pooler=False)
    step = rotation.prepare("JWT_SECRET", env, facts, now=int(time.time()))
    new = step.new_env["JWT_SECRET"]
    assert step.settings == {"app.settings.jwt_secret": new}
    oct_key = next(k for k in json.loads(step.new_env["JWT_JWKS"])["keys"] if k["kty"] == "oct")
    import base64

    assert base64.urlsafe_b64decode(oct_key["k"] + "==").decode() == new
    # The EC key is untouched: the asymmetric tokens still verify.
    from controller.secrets import verify_with_jwks

    assert verify_with_jwks(env["ANON_KEY_ASYMMETRIC"], step.new_env["JWT_JWKS"], "anon")


def test_rotating_everything_leaves_no_old_value_and_a_consistent_env():
    from controller import rotation
    from controller.envpolicy import check_text
    from controller.secrets import verify_with_jwks

    env = {**_new_style_env(), "POSTGRES_PASSWORD": "a" * 40, "DASHBOARD_PASSWORD": "b" * 20}
    facts = rotation.DbFacts(roles=["postgres"], jwt_in_db=False, pooler=True)
    keys = rotation.normalise([], env, every=True)
    assert keys[:3] == ["POSTGRES_PASSWORD", "JWT_SECRET", "JWT_KEYS"]
    prepared, after = rotation.prepare_all(keys, env, facts, int(time.time()))
    assert [k for k in env if after[k] == env[k]] == []
    assert check_text("".join(f"{k}={v}\n" for k, v in after.items())) == []
    # JWT_KEYS, rotated after JWT_SECRET, carries the new secret as its HS256 key.
    oct_key = next(k for k in json.loads(after["JWT_KEYS"]) if k["kty"] == "oct")
    assert jwt.decode(
        jwt.encode({"role": "anon"}, after["JWT_SECRET"], algorithm="HS256"),
        jwt.PyJWK(oct_key).key,
        algorithms=["HS256"],
    )
    assert verify_with_jwks(after["ANON_KEY_ASYMMETRIC"], after["JWT_JWKS"], "anon")
    assert any(p.pooler_reset for p in prepared)
