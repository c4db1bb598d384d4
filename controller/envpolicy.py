"""The .env policy: which keys are secret, which values are valid, and which changes an instance
takes through ``env set``/``unset``/``edit``.

This is the one place for these rules: masking (``env``, ``show``), the audit log, the shell's
history redaction and every way of changing an instance's .env ask here. Messages never quote a
secret value.
"""

import json
import re
import urllib.parse
from collections.abc import Mapping

from controller import secrets
from controller.envfile import KEY_RE, EnvSyntaxError, assignment
from controller.errors import UsageError

# Written by every render: the instance's compose project and file list.
MANAGED_KEYS = frozenset({"COMPOSE_PROJECT_NAME", "COMPOSE_FILE"})
# docker compose and the docker CLI read these from the project's .env: COMPOSE_FILE,
# COMPOSE_PATH_SEPARATOR or COMPOSE_PROFILES would drop the override (ports on 0.0.0.0, upstream
# container names), DOCKER_HOST would send the instance to another engine.
ENGINE_PREFIXES = ("COMPOSE_", "DOCKER_")
# Upstream's own variable (the socket path Vector mounts); neither docker nor compose reads it.
ENGINE_EXEMPT = frozenset({"DOCKER_SOCKET_LOCATION"})
# Changing these needs more than a restart (the password lives in the database too).
UNSAFE_KEYS = frozenset({"POSTGRES_PASSWORD"})
# Keys an instance cannot run without, even where an empty value would pass the other rules.
REQUIRED_KEYS = frozenset({"DASHBOARD_USERNAME", "DASHBOARD_PASSWORD", "POSTGRES_DB"})

# --- which keys are secret ------------------------------------------------------------------------

# Generated per instance but shown freely: the tenant id is part of every pooler user name.
_NOT_SECRET = frozenset({"POOLER_TENANT_ID"})
_SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "PRIVATE", "CREDENTIAL", "PASSPHRASE", "JWKS")
_SECRET_SUFFIXES = ("_KEY", "_KEYS", "_PASS", "_PASSWD", "_PWD", "_KEY_ID", "_API_KEY")


def is_secret(key: str) -> bool:
    """Whether ``key``'s value must be masked in output and kept out of logs, the audit log and
    the shell's history."""
    upper = key.upper()
    if upper in _NOT_SECRET:
        return False
    if upper in secrets.GENERATED:
        return True
    return any(word in upper for word in _SECRET_WORDS) or upper.endswith(_SECRET_SUFFIXES)


# --- values ---------------------------------------------------------------------------------------

_BOOL_WORDS = {"true", "false"}
_INT_SUFFIXES = ("_SIZE", "_CONN", "_EXPIRY", "_MAX_ROWS", "_LENGTH", "_EXP")
# Caddy's basic auth takes the user name as one word; keep it to what any client can type.
_DASHBOARD_USER = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
_BCRYPT_MAX_BYTES = 72


def key_problem(key: str) -> str | None:
    if not KEY_RE.fullmatch(key):
        return "is not a valid variable name (letters, digits and _, not starting with a digit)"
    return None


def _is_bool_key(key: str) -> bool:
    return key.startswith(("ENABLE_", "DISABLE_")) or key.endswith(
        ("_ENABLED", "_DISABLED", "_AUTOCONFIRM", "_VERIFY_JWT")
    )


def _url_problem(key: str, value: str) -> str | None:
    parsed = urllib.parse.urlsplit(value)
    if any(word in key for word in ("DB", "DATABASE", "POSTGRES")):
        if not parsed.scheme or not parsed.netloc:
            return "is not a URL (scheme://host...)"
        return None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return "is not an http(s) URL"
    try:
        parsed.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        return "has an invalid port"
    return None


def _ascii_number(value: str) -> bool:
    # str.isdigit() also accepts other scripts' digits, which int() then reads.
    return value.isascii() and value.isdigit()


def validate(key: str, value: str) -> str | None:
    """What is wrong with setting ``key`` to ``value``, or None. Never quotes a secret value."""
    problem = key_problem(key)
    if problem:
        return problem
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 text"
    if any(char in value for char in "\n\r\0"):
        return "contains a newline, carriage return or NUL character"
    if key in REQUIRED_KEYS and not value:
        return "must not be empty: the instance needs it"
    problem = secrets.check_secret(key, value)
    if problem:
        return problem
    shown = "" if is_secret(key) else f" ({value!r})"
    if key == "DASHBOARD_USERNAME" and not _DASHBOARD_USER.fullmatch(value):
        return "must be 1-64 letters, digits or . _ @ + - (it is Studio's login name)"
    if key == "DASHBOARD_PASSWORD" and len(value.encode()) > _BCRYPT_MAX_BYTES:
        return f"must be at most {_BCRYPT_MAX_BYTES} bytes long (bcrypt's limit)"
    if key.endswith("_PORT"):
        if not _ascii_number(value) or not 1 <= int(value) <= 65535:
            return f"is not a port number 1-65535{shown}"
    elif key.endswith("_URL"):
        problem = _url_problem(key, value)
        if problem:
            return problem + shown
    elif key.endswith("_URLS") and value:
        for part in value.split(","):
            problem = _url_problem(key, part.strip()) if "*" not in part else None
            if problem:
                return f"holds an entry that {problem}"
    elif _is_bool_key(key):
        if value.lower() not in _BOOL_WORDS:
            return f"must be true or false{shown}"
    elif key.endswith(_INT_SUFFIXES) and not key.endswith("_KEY"):
        if not _ascii_number(value):
            return f"must be a whole number{shown}"
    elif key == "COMPOSE_PROJECT_NAME" and not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", value):
        return "must be lowercase letters, digits, '-' and '_'"
    return None


def _cross_checks(values: Mapping[str, str]) -> list[tuple[str, str]]:
    """Problems between keys: the legacy API keys must be signed with JWT_SECRET."""
    import jwt  # here: PyJWT costs ~40 ms and only these checks need it

    problems: list[tuple[str, str]] = []
    secret = values.get("JWT_SECRET")
    if not secret:
        return problems
    for key, role in (("ANON_KEY", "anon"), ("SERVICE_ROLE_KEY", "service_role")):
        token = values.get(key)
        if not token:
            continue
        try:
            claims = jwt.decode(token, secret, algorithms=["HS256"], options={"verify_aud": False})
        except jwt.PyJWTError:
            problems.append((key, "is not a JWT signed with JWT_SECRET"))
            continue
        if claims.get("role") != role:
            problems.append((key, f"does not carry role {role!r}"))
    jwks = values.get("JWT_JWKS")
    if jwks:
        try:
            parsed = json.loads(jwks)
            keys = parsed["keys"] if isinstance(parsed, dict) else None
            if not isinstance(keys, list):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            keys = None
        if keys is not None:
            for key, role in (
                ("ANON_KEY_ASYMMETRIC", "anon"),
                ("SERVICE_ROLE_KEY_ASYMMETRIC", "service_role"),
            ):
                token = values.get(key)
                if token and not secrets.verify_with_jwks(token, jwks, role):
                    problems.append((key, "does not verify against JWT_JWKS"))
    return problems


def check_text(text: str) -> list[str]:
    """Problems in a whole .env text, one per line with its line number (empty: fine)."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    values: dict[str, str] = {}
    if "\0" in text:
        return ["the text contains a NUL character"]
    body = text[:-1] if text.endswith("\n") else text
    for number, line in enumerate(body.split("\n") if body else [], start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            parsed = assignment(line)
        except EnvSyntaxError as exc:
            problems.append(f"line {number}: {exc}")
            continue
        if parsed is None:
            problems.append(f"line {number}: not KEY=VALUE")
            continue
        key, value = parsed
        if key in seen:
            problems.append(f"line {number}: {key} is already set on line {seen[key]}")
        seen.setdefault(key, number)
        problem = validate(key, value)
        if problem:
            problems.append(f"line {number}: {key} {problem}")
        values[key] = value
    for key, problem in _cross_checks(values):
        problems.append(f"line {seen[key]}: {key} {problem}")
    return problems


# --- changes ------------------------------------------------------------------------------------


def check_key(key: str) -> None:
    """A KEY argument must be a variable name; anything else is refused without echoing it, as
    it may be a mistyped KEY=secret."""
    if key_problem(key):
        raise UsageError("invalid variable name: use letters, digits and '_' (e.g. SITE_URL)")


def change_problem(key: str, value: str | None) -> str | None:
    """Why the instance must not take ``key`` set to ``value`` (None: removed), or None."""
    problem = key_problem(key)
    if problem:
        return problem
    if key in MANAGED_KEYS:
        return f"{key} is managed by supabase-manager and cannot be changed"
    if key.startswith(ENGINE_PREFIXES) and key not in ENGINE_EXEMPT:
        return (
            f"{key} is refused: docker compose would read it from .env and no longer address "
            "this instance as supabase-manager set it up"
        )
    if key in UNSAFE_KEYS:
        return (
            f"{key} also lives inside the database: changing it in .env alone would break "
            "the instance"
        )
    if value is None:
        if key in REQUIRED_KEYS or validate(key, ""):
            return f"{key} cannot be removed: the instance needs it"
        return None
    problem = validate(key, value)
    return f"invalid value for {key}: {problem}" if problem else None


def check_change(key: str, value: str | None) -> None:
    """UsageError when ``change_problem`` has something to say; raised before anything is
    written or audited."""
    check_key(key)
    problem = change_problem(key, value)
    if problem:
        raise UsageError(problem)


def changed_keys(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def edit_problems(before: Mapping[str, str], text: str, after: Mapping[str, str]) -> list[str]:
    """Problems of an edited .env ``text`` (parsed: ``after``) replacing ``before``."""
    problems = check_text(text)
    if problems:
        return problems
    for key in changed_keys(before, after):
        problem = change_problem(key, after.get(key))
        if problem:
            problems.append(problem)
    return problems
