"""The Postgres side of secret rotation: which roles log in with POSTGRES_PASSWORD, SCRAM
verifiers, and psql sessions in an instance's db container.

Secrets reach psql only on its stdin, as psql variables (``\\set``) used as ``:'name'``: never
spliced into SQL text, never on a command line. Role passwords are not even sent in the clear:
the server is given a SCRAM-SHA-256 verifier made here (what psql's ``\\password`` does), so the
plaintext never reaches the database server or its logs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from controller import containerio
from controller.errors import OperationError

# Supabase's image (migrations/db/migrate.sh) gives these two POSTGRES_PASSWORD itself; the
# template's roles.sql gives it to the rest.
IMAGE_PASSWORD_ROLES = ("supabase_admin", "postgres")
SUPERUSERS = ("supabase_admin", "postgres")
ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_$]{0,62}$")
SCRAM_ITERATIONS = 4096

# `\set pgpass `echo "$POSTGRES_PASSWORD"`` in an init script: the variable holding it.
_SET_FROM_ENV = re.compile(r"\\set\s+(\w+)\s+`\s*echo\s+\"?\$\{?(\w+)\}?\"?\s*`")
_PASSWORD_USE = re.compile(
    r"(?:ALTER|CREATE)\s+(?:USER|ROLE)\s+\"?([A-Za-z_][\w$]*)\"?[^;]*?PASSWORD\s+:'(\w+)'",
    re.IGNORECASE,
)


# --- SCRAM-SHA-256 verifiers (RFC 5802 / 7677, the form pg_authid stores) ---
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return hashlib.sha256(client_key).digest(), server_key


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS):
    """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` for ``password``."""
    salt = os.urandom(16) if salt is None else salt
    stored, server = _keys(password, salt, iterations)
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored)}:{_b64(server)}"


def scram_matches(password: str, verifier: str | None) -> bool:
    """Whether ``verifier`` (pg_authid.rolpassword) was made from ``password``."""
    match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", verifier or "")
    if not match:
        return False
    try:
        salt = base64.b64decode(match.group(2))
    except ValueError:
        return False
    stored, server = _keys(password, salt, int(match.group(1)))
    return hmac.compare_digest(_b64(stored), match.group(3)) and hmac.compare_digest(
        _b64(server), match.group(4)
    )


# --- which roles use POSTGRES_PASSWORD ---
def roles_from_scripts(texts: Iterable[str], variable: str = "POSTGRES_PASSWORD") -> list[str]:
    """Roles that init scripts give the environment variable ``variable`` as their password
    (``\\set pgpass `echo "$POSTGRES_PASSWORD"``` then ``ALTER USER x WITH PASSWORD :'pgpass'``)."""
    roles: list[str] = []
    for text in texts:
        names = {m.group(1) for m in _SET_FROM_ENV.finditer(text) if m.group(2) == variable}
        for match in _PASSWORD_USE.finditer(text):
            role = match.group(1)
            if match.group(2) in names and role not in roles and ROLE_NAME.match(role):
                roles.append(role)
    return roles


def init_script_texts(folder: Path, sources: Iterable[str]) -> list[str]:
    """The text of each init script mounted from the instance folder (missing ones skipped)."""
    texts = []
    for source in sources:
        path = Path(source) if Path(source).is_absolute() else folder / source
        try:
            if path.is_file():
                texts.append(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
    return texts


def password_roles(folder: Path, sources: Iterable[str]) -> list[str]:
    """The image's roles and the template's roles that log in with POSTGRES_PASSWORD."""
    roles = list(IMAGE_PASSWORD_ROLES)
    for role in roles_from_scripts(init_script_texts(folder, sources)):
        if role not in roles:
            roles.append(role)
    return roles


def sets_jwt_secret(folder: Path, sources: Iterable[str]) -> bool:
    """Whether the template's init scripts store JWT_SECRET in the database (jwt.sql of older
    templates: ``app.settings.jwt_secret``)."""
    return any(
        "app.settings.jwt_secret" in text and "JWT_SECRET" in text
        for text in init_script_texts(folder, sources)
    )


# --- psql in the db container ---
def quote_psql(value: str) -> str:
    """A psql meta-command argument in single quotes (psql undoes \\\\ and '')."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def set_lines(variables: Mapping[str, str]) -> str:
    for name in variables:
        if not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise ValueError(f"bad psql variable name {name!r}")
    return "".join(f"\\set {name} {quote_psql(value)}\n" for name, value in variables.items())


class Psql:
    """psql sessions as a superuser in one container: the script and its variables on stdin.

    Over TCP to 127.0.0.1 with the first of ``passwords`` that works (Supabase's image trusts
    127.0.0.1; the test world's stand-in asks), else the local socket."""

    def __init__(self, container: str, passwords: Sequence[str], database: str = "postgres"):
        self.container = container
        self.passwords = [p for p in dict.fromkeys(passwords) if p]
        self.database = database
        self._how: tuple[str, str, str | None] | None = None

    def _attempt(self, user: str, password: str | None, tcp: bool, database: str, script: str):
        command = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-tA", "-F", "\t"]
        command += (["-h", "127.0.0.1"] if tcp else []) + ["-U", user, "-d", database, "-f", "-"]
        secret_env = {"PGPASSWORD": password or ""}
        argv = containerio.exec_argv(self.container, command, secret_env, stdin=True)
        env = containerio.process_env(secret_env)  # the instance's engine (controller/hosts.py)
        return subprocess.run(
            argv, input=script, capture_output=True, text=True, env=env, timeout=300
        )

    def run(self, script: str, variables: Mapping[str, str] | None = None, database: str = ""):
        """Run ``script`` with ``variables``; its rows (tab-separated fields)."""
        text = set_lines(variables or {}) + script
        database = database or self.database
        ways = [self._how] if self._how else []
        for user in SUPERUSERS:
            ways += [("tcp", user, p) for p in self.passwords] + [("socket", user, None)]
        last = "no way to connect"
        for way in ways:
            kind, user, password = way
            proc = self._attempt(user, password, kind == "tcp", database, text)
            if proc.returncode == 0:
                self._how = way
                return [line.split("\t") for line in proc.stdout.splitlines() if line.strip()]
            last = containerio.last_line(proc.stderr)
            if "psql: error: connection" not in proc.stderr and "FATAL" not in proc.stderr:
                break  # connected, and the script itself failed: do not try it twice
        raise OperationError(f"psql in {self.container} failed: {_without_secrets(last)}")


def _without_secrets(line: str) -> str:
    # psql echoes a failing statement's text only for syntax errors; values never appear in our
    # SQL text (they are variables), so the line is safe, but keep it short.
    return line[:200]


# --- what the rotation runs ---
def role_passwords(psql: Psql, roles: Sequence[str]) -> dict[str, str]:
    """rolname -> stored verifier ('' when none) of the existing roles among ``roles``."""
    names = ",".join(r for r in roles if ROLE_NAME.match(r))
    rows = psql.run(
        "select rolname, coalesce(rolpassword, '') from pg_authid "
        "where rolname = any(string_to_array(:'roles', ','));\n",
        {"roles": names},
    )
    return {row[0]: row[1] if len(row) > 1 else "" for row in rows}


def login_roles_using(psql: Psql, password: str) -> list[str]:
    """Every login role whose stored verifier matches ``password``."""
    rows = psql.run("select rolname, rolpassword from pg_authid where rolcanlogin;\n")
    return sorted(row[0] for row in rows if len(row) > 1 and scram_matches(password, row[1]))


def database_setting(psql: Psql, name: str, database: str = "postgres") -> str | None:
    """A per-database setting (ALTER DATABASE ... SET), or None."""
    rows = psql.run(
        "select s from pg_db_role_setting d join pg_database b on b.oid = d.setdatabase, "
        "unnest(d.setconfig) s where d.setrole = 0 and b.datname = :'db';\n",
        {"db": database},
    )
    prefix = name + "="
    for value, *_ in rows:
        if value.startswith(prefix):
            return value[len(prefix) :]
    return None


def apply(
    psql: Psql,
    passwords: Mapping[str, str],
    settings: Mapping[str, str],
    database: str = "postgres",
) -> None:
    """In ONE transaction: each role of ``passwords`` gets its password (as a fresh verifier),
    each setting of ``settings`` is set on ``database``. All or nothing."""
    variables: dict[str, str] = {"db": database}
    lines = ["begin;"]
    for index, (role, password) in enumerate(passwords.items()):
        if not ROLE_NAME.match(role):
            raise OperationError(f"refusing odd role name {role!r}")
        variables[f"r{index}"] = role
        variables[f"v{index}"] = scram_verifier(password)
        lines.append(f"alter role :\"r{index}\" with password :'v{index}';")
    for index, (name, value) in enumerate(settings.items()):
        variables[f"s{index}"] = name
        variables[f"w{index}"] = value
        lines.append(f'alter database :"db" set :"s{index}" to :\'w{index}\';')
    lines.append("commit;")
    psql.run("\n".join(lines) + "\n", variables)


def masked_sql(passwords: Iterable[str], settings: Iterable[str]) -> list[str]:
    """What ``apply`` runs, values masked (for --dry-run)."""
    out = [f"ALTER ROLE {role} WITH PASSWORD '********'  -- a SCRAM verifier" for role in passwords]
    out += [f"ALTER DATABASE postgres SET \"{name}\" TO '********'" for name in settings]
    return out


def reset_pooler_tenant(psql: Psql, tenant: str) -> bool:
    """Forget Supavisor's stored tenant (its credentials are kept encrypted in
    _supabase._supavisor): pooler.exs creates it again from .env when Supavisor starts.
    True when a tenant was removed."""
    rows = psql.run(
        "select exists(select from pg_database where datname = '_supabase') as has_db \\gset\n"
        "\\if :has_db\n"
        "\\c _supabase\n"
        "select to_regclass('_supavisor.tenants') is not null as has_tenants \\gset\n"
        "\\if :has_tenants\n"
        "with gone as (delete from _supavisor.tenants where external_id = :'tenant' "
        "returning 1) select count(*) from gone;\n"
        "\\endif\n"
        "\\endif\n",
        {"tenant": tenant},
    )
    return bool(rows) and rows[-1][0] not in ("", "0")


def copies_in_database(psql: Psql, needles: Mapping[str, str]) -> list[str]:
    """Where values of ``needles`` (label -> old value) are copied inside the database: trigger
    arguments (webhooks), function bodies, pg_cron jobs. One line per place, values never shown."""
    script = [
        "select to_regclass('cron.job') is not null as has_cron \\gset\n",
    ]
    variables: dict[str, str] = {}
    for index, (label, value) in enumerate(needles.items()):
        if len(value) < 8:
            continue
        variables[f"n{index}"] = value
        variables[f"l{index}"] = label
        script.append(
            f"select :'l{index}', 'trigger ' || t.tgname || ' on ' || t.tgrelid::regclass "
            f"from pg_trigger t where not t.tgisinternal "
            f"and strpos(encode(t.tgargs, 'escape'), :'n{index}') > 0 "
            f"union all select :'l{index}', 'function ' || p.oid::regprocedure "
            f"from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
            f"where n.nspname not in ('pg_catalog', 'information_schema') "
            f"and strpos(p.prosrc, :'n{index}') > 0;\n"
            f"\\if :has_cron\n"
            f"select :'l{index}', 'cron job ' || jobid from cron.job "
            f"where strpos(command, :'n{index}') > 0;\n"
            f"\\endif\n"
        )
    if not variables:
        return []
    rows = psql.run("".join(script), variables)
    return [f"{row[0]}: {row[1]}" for row in rows if len(row) > 1]
