"""Day-two commands on an instance that runs on another Docker host: `env set` / `env edit`,
`logs` and `rotate`, through the real CLI, a real Caddy and the worker of tests/world/worker.py
(a second engine behind a real sshd, its files in a mount namespace of its own).

What the user would check is read where the instance runs: the worker's copy of .env (in the
worker's own file system), the containers and the PostgreSQL on the worker's engine, the gateway
through Caddy. Supabase's service images are stand-ins (tests/world/standin.py); the db service
is a real PostgreSQL with Supabase's roles. The API gateway's stand-in is given Kong's key check
(an `apikey` header must equal one of the keys the container was started with), so "the old anon
key is refused" is a real answer of the recreated container.

Every ssh and docker process the CLI starts runs through a logging shim first on PATH: their
argv (the remote command lines included) is checked for secrets.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import jwt
import pytest
import yaml

from tests.test_rotate import PASSWORD_ROLES
from tests.world.remote import HOST, RemoteRoot, remote_world

pytestmark = pytest.mark.docker

NAME = "rr"
TEMPLATE = "v0.8.2"

# The gateway stand-in: one HTTP exchange per connection (busybox nc -e). /rest/* wants an apikey
# header equal to a key the container was started with, as Kong's key-auth does.
GATE = r"""#!/bin/sh
cr=$(printf '\r')
read -r -t 10 method path version || exit 0
key=
while read -r -t 10 line; do
    line=${line%"$cr"}
    [ -z "$line" ] && break
    case "$line" in [Aa][Pp][Ii][Kk][Ee][Yy]:*) key=${line#*:}; key=${key# } ;; esac
done
status="200 OK"
body="gateway of $COMPOSE_PROJECT_NAME"
case "$path" in
    /rest/*)
        if [ -z "$key" ] || { [ "$key" != "$ANON_KEY" ] && [ "$key" != "$SERVICE_ROLE_KEY" ]; }
        then status="401 Unauthorized"; body="invalid api key"; fi ;;
esac
printf 'HTTP/1.1 %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
    "$status" "${#body}" "$body"
"""


def gate_overlay(path: Path) -> Path:
    """A compose file layered after the stand-in overlay: api-gw runs GATE on port 8000."""
    start = (
        'printf "%s" "$$SBM_GATE" > /tmp/gate && chmod 755 /tmp/gate && '
        "trap 'exit 0' TERM INT; nc -ll -p 8000 -e /tmp/gate & wait"
    )
    service = {
        "entrypoint": ["sh", "-c", start],
        "command": [],
        "environment": {
            "SBM_GATE": GATE.replace("$", "$$"),
            "COMPOSE_PROJECT_NAME": "${COMPOSE_PROJECT_NAME}",
        },
        "healthcheck": {
            "test": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8000/"],
            "interval": "1s",
            "timeout": "3s",
            "retries": 30,
        },
    }
    path.write_text(yaml.safe_dump({"services": {"api-gw": service}}, sort_keys=False))
    return path


def write_shims(folder: Path, log: Path) -> Path:
    """`ssh` and `docker` that log their argv (one line each, words quoted) and run the real
    ones: first on the CLI's PATH, so ssh.py's ssh, the docker CLI's ssh (through ROOT/ssh/bin)
    and every docker process go through them."""
    folder.mkdir()
    for tool in ("ssh", "docker"):
        real = shutil.which(tool)
        assert real, f"{tool} is not installed"
        shim = folder / tool
        shim.write_text(
            "#!/bin/sh\n"
            f'printf "%s\\n" "{tool} $*" >> {shlex.quote(str(log))}\n'
            f'exec {shlex.quote(real)} "$@"\n'
        )
        shim.chmod(0o755)
    return folder


class World(RemoteRoot):
    argv_log: Path  # the shims' log of every ssh and docker argv

    @property
    def folder(self) -> Path:
        return self.root / "instances" / NAME

    def local_env(self) -> str:
        return (self.folder / ".env").read_text()

    def worker_env(self) -> str:
        """The .env the worker's engine reads: the copy in the worker's own file system."""
        return self.worker.run(f"cat {shlex.quote(str(self.folder / '.env'))}").stdout

    def worker_env_mode(self) -> int:
        out = self.worker.run(f"stat -c %a {shlex.quote(str(self.folder / '.env'))}").stdout
        return int(out.strip(), 8)

    def values(self) -> dict[str, str]:
        return parse_env(self.local_env())

    def container(self, service: str):
        """The service's running container on the worker's engine."""
        found = self.client.containers.list(
            filters={
                "label": [
                    f"com.docker.compose.project={NAME}",
                    f"com.docker.compose.service={service}",
                ]
            }
        )
        assert len(found) == 1, f"{service}: {found}"
        return found[0]

    def container_env(self, service: str) -> dict[str, str]:
        env = self.container(service).attrs["Config"]["Env"]
        return dict(item.partition("=")[::2] for item in env)

    def logins(self, password: str) -> dict[str, bool]:
        """Which roles log in over TCP (scram) to the worker's db with ``password`` (given to
        psql in the exec's environment, never on an argv)."""
        script = (
            'for u in "$@"; do if psql -X -h 127.0.0.1 -U "$u" -d postgres -tAc "select 1" '
            '>/dev/null 2>&1; then echo "$u yes"; else echo "$u no"; fi; done'
        )
        code, out = self.container("db").exec_run(
            ["sh", "-c", script, "sh", *PASSWORD_ROLES], environment={"PGPASSWORD": password}
        )
        assert code == 0, out
        return {line.split()[0]: line.split()[1] == "yes" for line in out.decode().splitlines()}

    def journal(self) -> Path:
        return self.root / "rotate" / f"{NAME}.json"


def parse_env(text: str) -> dict[str, str]:
    from controller.envfile import EnvFile

    return EnvFile.parse(text).as_dict()


@pytest.fixture(scope="module")
def world(tmp_path_factory, docker_client, worker):
    base = tmp_path_factory.mktemp("remote-rotate")
    log = base / "argv.log"
    shims = write_shims(base / "shims", log)
    with remote_world(
        base,
        docker_client,
        worker,
        world=World,
        env={"PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', os.defpath)}"},
        template=TEMPLATE,
        instance=NAME,
        extra_compose=[gate_overlay(base / "gate.yml")],
    ) as w:
        w.argv_log = log
        yield w


def api(world, key: str | None):
    headers = {"apikey": key} if key is not None else {}
    return world.caddy.get(f"{NAME}.sbm.test", "/rest/v1/", headers=headers)


# --- the instance runs there -------------------------------------------------------------------
def test_the_instance_runs_on_the_worker_with_its_env_there(world, docker_client):
    assert json.loads((world.root / "state.json").read_text())["instances"][NAME]["host"] == HOST
    label = {"label": f"com.docker.compose.project={NAME}"}
    assert docker_client.containers.list(all=True, filters=label) == []
    assert world.worker_env() == world.local_env()
    assert world.worker_env_mode() == 0o600
    # The gateway on the worker, through Caddy, checks the key as Kong does.
    anon = world.values()["ANON_KEY"]
    assert api(world, anon).status_code == 200
    assert api(world, None).status_code == 401


# --- env --------------------------------------------------------------------------------------
def test_env_set_reaches_the_workers_env_and_then_its_container(world):
    proc = world.run("env", NAME, "set", "PGRST_DB_MAX_ROWS=777")
    assert "PGRST_DB_MAX_ROWS=777" in world.worker_env().splitlines()
    assert world.worker_env() == world.local_env()
    assert world.worker_env_mode() == 0o600
    # As for a local instance: the services to restart are named, and a restart applies it.
    (named,) = [line for line in proc.stdout.splitlines() if "must restart:" in line]
    assert "rest" in named.partition(":")[2].replace(",", " ").split()
    world.run("restart", NAME, "rest")
    assert world.container_env("rest")["PGRST_DB_MAX_ROWS"] == "777"
    shown = world.json("env", NAME)
    assert shown["PGRST_DB_MAX_ROWS"] == "777"
    assert shown["POSTGRES_PASSWORD"] != world.values()["POSTGRES_PASSWORD"]  # masked


def test_a_malformed_value_is_refused_and_changes_nothing_on_either_side(world):
    local, there = world.local_env(), world.worker_env()
    proc = world.run("env", NAME, "set", "PGRST_DB_MAX_ROWS=lots", check=False)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = world.run("env", NAME, "set", "SMTP_PORT=99999", check=False)
    assert proc.returncode == 2, proc.stderr
    assert world.local_env() == local and world.worker_env() == there


def test_env_edit_reaches_the_workers_env(world):
    editor = "sed -i s/^SMTP_SENDER_NAME=.*/SMTP_SENDER_NAME=edited-remotely/"
    world.run("env", NAME, "edit", env={"EDITOR": editor, "VISUAL": ""})
    assert "SMTP_SENDER_NAME=edited-remotely" in world.worker_env().splitlines()
    assert world.worker_env() == world.local_env()
    assert world.worker_env_mode() == 0o600


# --- logs -------------------------------------------------------------------------------------
def test_logs_show_the_workers_container_output(world):
    marker = "sbm-remote-logs-" + os.urandom(4).hex()
    # A failing statement: the worker's PostgreSQL logs it, with its text, to the container's
    # output.
    code, _ = world.container("db").exec_run(
        ["psql", "-X", "-U", "postgres", "-d", "postgres", "-c", f"select '{marker}'::int"]
    )
    assert code != 0
    proc = world.run("logs", NAME, "db", "--tail", "50")
    assert marker in proc.stdout
    assert all(line.startswith(f"{NAME}-db ") for line in proc.stdout.splitlines() if line.strip())
    assert marker in world.run("logs", NAME, "--tail", "50").stdout


# --- rotate -----------------------------------------------------------------------------------
def test_rotation_reaches_the_workers_database_gateway_and_caddy(world):
    before = world.values()
    user = before["DASHBOARD_USERNAME"]
    studio = f"{NAME}-studio.sbm.test"
    assert world.caddy.get(studio, auth=(user, before["DASHBOARD_PASSWORD"])).status_code == 200
    log_start = world.argv_log.stat().st_size
    proc = world.run(
        "rotate", NAME, "POSTGRES_PASSWORD", "JWT_SECRET", "JWT_KEYS", "DASHBOARD_PASSWORD"
    )
    after = world.values()
    # The worker's copy is the new .env, still private.
    assert world.worker_env() == world.local_env()
    assert world.worker_env_mode() == 0o600
    # Every role logs in on the worker's database with the new password, none with the old.
    assert after["POSTGRES_PASSWORD"] != before["POSTGRES_PASSWORD"]
    assert world.logins(after["POSTGRES_PASSWORD"]) == dict.fromkeys(PASSWORD_ROLES, True)
    assert not any(world.logins(before["POSTGRES_PASSWORD"]).values())
    # New JWT secret and keys; the legacy keys are signed with the new secret only.
    assert after["JWT_SECRET"] != before["JWT_SECRET"]
    assert after["JWT_KEYS"] != before["JWT_KEYS"] and after["JWT_JWKS"] != before["JWT_JWKS"]
    claims = jwt.decode(after["ANON_KEY"], after["JWT_SECRET"], algorithms=["HS256"])
    assert claims["role"] == "anon"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(after["ANON_KEY"], before["JWT_SECRET"], algorithms=["HS256"])
    from controller.secrets import verify_with_jwks

    assert after["ANON_KEY_ASYMMETRIC"] != before["ANON_KEY_ASYMMETRIC"]
    assert verify_with_jwks(after["ANON_KEY_ASYMMETRIC"], after["JWT_JWKS"], "anon")
    # The worker's containers were recreated with them.
    gateway = world.container_env("api-gw")
    assert gateway["ANON_KEY"] == after["ANON_KEY"]
    assert gateway["ANON_KEY_ASYMMETRIC"] == after["ANON_KEY_ASYMMETRIC"]
    assert (
        world.container_env("auth")["GOTRUE_DB_DATABASE_URL"].count(after["POSTGRES_PASSWORD"]) == 1
    )
    # Through Caddy: the new anon key is let in, the old one is refused.
    assert api(world, after["ANON_KEY"]).status_code == 200
    assert api(world, before["ANON_KEY"]).status_code == 401
    assert world.caddy.get(studio, auth=(user, after["DASHBOARD_PASSWORD"])).status_code == 200
    assert world.caddy.get(studio, auth=(user, before["DASHBOARD_PASSWORD"])).status_code == 401
    assert not world.journal().exists()
    # No secret, old or new, in the output, the audit log or the argv of any ssh or docker
    # process (the remote command lines included).
    with world.argv_log.open() as handle:
        handle.seek(log_start)
        argv = handle.read()
    assert "docker system dial-stdio" in argv and " psql " in argv  # the shims saw them
    assert "sh -c" in argv  # the folder's sync over ssh.py
    keys = ("POSTGRES_PASSWORD", "JWT_SECRET", "ANON_KEY", "SERVICE_ROLE_KEY", "JWT_KEYS")
    keys += ("ANON_KEY_ASYMMETRIC", "DASHBOARD_PASSWORD")
    values = {
        f"{k} ({when})": env[k] for k in keys for when, env in (("old", before), ("new", after))
    }
    places = {
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "audit log": (world.root / "audit.log").read_text(),
        "argv": argv,
    }
    leaks = {
        where: [label for label, v in values.items() if v in text] for where, text in places.items()
    }
    assert leaks == {where: [] for where in places}  # labels only: no secret is printed


def test_a_killed_rotation_converges_on_the_worker_at_the_next_start(world):
    old = world.values()["POSTGRES_PASSWORD"]
    killed = world.run(
        "rotate",
        NAME,
        "POSTGRES_PASSWORD",
        check=False,
        env={"SUPABASE_MANAGER_FAULT": "rotate:database"},
    )
    assert killed.returncode == -9, killed.stderr
    new = json.loads(world.journal().read_text())["new"]["POSTGRES_PASSWORD"]
    # The worker's database already took the new password; .env (both copies) still the old.
    assert all(world.logins(new).values())
    assert parse_env(world.worker_env())["POSTGRES_PASSWORD"] == old
    world.run("start", NAME)
    assert not world.journal().exists()
    assert world.values()["POSTGRES_PASSWORD"] == new
    assert world.worker_env() == world.local_env()
    assert world.container_env("auth")["GOTRUE_DB_DATABASE_URL"].count(new) == 1
    assert all(world.logins(new).values()) and not any(world.logins(old).values())


def test_rotating_a_stopped_instance_keeps_the_workers_env_in_step(world):
    """An instance never started (no compose run to copy the folder): its .env there, made by
    `env set`, follows a rotation at once."""
    other = NAME + "0"
    world.run("create", other, "--template", TEMPLATE, "--host", HOST, "--no-start")
    try:
        there = shlex.quote(str(world.folder.parent / other / ".env"))
        world.run("env", other, "set", "PGRST_DB_MAX_ROWS=55")
        before = parse_env(world.worker.run(f"cat {there}").stdout)
        world.run("rotate", other, "SECRET_KEY_BASE")
        after = (world.folder.parent / other / ".env").read_text()
        assert parse_env(after)["SECRET_KEY_BASE"] != before["SECRET_KEY_BASE"]
        assert world.worker.run(f"cat {there}").stdout == after
    finally:
        world.run("delete", other, "--purge", "--yes", check=False)
