"""What rotating each secret means: its new values, where else it lives (database roles and
settings, Supavisor's stored tenant, Caddy's basic auth) and which clients must change.

Pure: no Docker, no files. controller/ops/rotate.py carries a plan out.
"""

from __future__ import annotations

import json
import secrets as _random
import string
from collections.abc import Iterable, Mapping

import attrs
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from controller import secrets
from controller.errors import UsageError

JWT_SETTING = "app.settings.jwt_secret"

# Secrets rotated with another one (they are made from it).
ALIASES = {
    "ANON_KEY": "JWT_SECRET",
    "SERVICE_ROLE_KEY": "JWT_SECRET",
    "JWT_JWKS": "JWT_KEYS",
    "ANON_KEY_ASYMMETRIC": "JWT_KEYS",
    "SERVICE_ROLE_KEY_ASYMMETRIC": "JWT_KEYS",
}
# Cannot be rotated in place: said plainly instead of pretending.
NOT_IN_PLACE = {
    "PGSODIUM_ROOT_KEY": (
        "the pgsodium/Vault root key lives in the db-config volume, not in .env; every Vault "
        "secret is encrypted under it and Supabase has no re-encryption path: it is not rotated"
    ),
}
# Simple secrets: a fresh value in .env, then the services that read it are recreated.
SIMPLE = (
    "SECRET_KEY_BASE",
    "PG_META_CRYPTO_KEY",
    "LOGFLARE_PUBLIC_ACCESS_TOKEN",
    "LOGFLARE_PRIVATE_ACCESS_TOKEN",
    "LOGFLARE_API_KEY",
    "LOGFLARE_LOGGER_BACKEND_API_KEY",
    "S3_PROTOCOL_ACCESS_KEY_ID",
    "S3_PROTOCOL_ACCESS_KEY_SECRET",
    "MINIO_ROOT_PASSWORD",
    "VAULT_ENC_KEY",
    "REALTIME_DB_ENC_KEY",
)
ROTATABLE = (
    "POSTGRES_PASSWORD",
    "JWT_SECRET",
    "JWT_KEYS",
    "SUPABASE_PUBLISHABLE_KEY",
    "SUPABASE_SECRET_KEY",
    "DASHBOARD_PASSWORD",
    *SIMPLE,
)
_CLIENTS = {
    "S3_PROTOCOL_ACCESS_KEY_ID": "S3 clients of Storage",
    "S3_PROTOCOL_ACCESS_KEY_SECRET": "S3 clients of Storage",
    "LOGFLARE_PUBLIC_ACCESS_TOKEN": "clients of the analytics API",
    "LOGFLARE_PRIVATE_ACCESS_TOKEN": "clients of the analytics API",
    "DASHBOARD_PASSWORD": "people who sign in to Studio",
    "POSTGRES_PASSWORD": "direct database clients (postgres:// URLs, the pooler)",
}


@attrs.frozen
class SecretChange:
    """One secret's rotation as shown to the user (no values)."""

    secret: str
    env_keys: list[str]
    sql: list[str] = attrs.field(factory=list)
    client_keys: list[str] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)


@attrs.define
class Prepared:
    """A secret's rotation with its values (never printed)."""

    change: SecretChange
    new_env: dict[str, str]
    role_password: str | None = None  # POSTGRES_PASSWORD's new value, for the roles
    settings: dict[str, str] = attrs.field(factory=dict)  # database settings to set
    pooler_reset: bool = False
    caddy: bool = False


@attrs.frozen
class DbFacts:
    """What the instance's template and database say."""

    roles: list[str]  # login roles that use POSTGRES_PASSWORD
    jwt_in_db: bool  # app.settings.jwt_secret is kept in the database
    pooler: bool  # Supavisor runs (it stores the tenant's credentials)


def normalise(requested: Iterable[str], env: Mapping[str, str], every: bool) -> list[str]:
    """The secrets to rotate, in a stable order; UsageError for unknown or impossible ones."""
    if every:
        wanted = [k for k in ROTATABLE if env.get(k)]
        if env.get("JWT_KEYS") and "JWT_KEYS" not in wanted:
            wanted.append("JWT_KEYS")
        return wanted
    out: list[str] = []
    for raw in requested:
        key = raw.strip().upper()
        if key in NOT_IN_PLACE:
            raise UsageError(f"{key} cannot be rotated in place: {NOT_IN_PLACE[key]}")
        if key in ALIASES:
            raise UsageError(f"{key} is made from {ALIASES[key]}: rotate {ALIASES[key]}")
        if key not in ROTATABLE:
            raise UsageError(
                f"{key or raw!r} is not a secret rotate knows; one of: {', '.join(ROTATABLE)}"
            )
        if key not in env:
            raise UsageError(f"this instance has no {key} in its .env")
        if not env.get(key) and key in (
            "JWT_KEYS",
            "SUPABASE_PUBLISHABLE_KEY",
            "SUPABASE_SECRET_KEY",
        ):
            raise UsageError(f"{key} is empty in this instance's .env: nothing to rotate")
        if key not in out:
            out.append(key)
    return out


def _alnum(length: int) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(_random.choice(alphabet) for _ in range(length))


def _fresh(key: str) -> str:
    if key == "SUPABASE_PUBLISHABLE_KEY":
        return "sb_publishable_" + _alnum(32)
    if key == "SUPABASE_SECRET_KEY":
        return "sb_secret_" + _alnum(32)
    value = secrets.generate_secrets([key]).get(key)
    if not value:
        raise UsageError(f"no generator for {key}")
    return value


def _b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _with_oct(text: str, secret: str, jwks: bool) -> str:
    """JWT_KEYS / JWT_JWKS with the HS256 (oct) key replaced by ``secret``."""
    parsed = json.loads(text)
    keys = parsed["keys"] if jwks else parsed
    for jwk in keys:
        if isinstance(jwk, dict) and jwk.get("kty") == "oct":
            jwk["k"] = _b64url(secret.encode())
    return json.dumps(parsed, separators=(",", ":"))


def _sign(role: str, key, kid: str | None, now: int) -> str:
    payload = {"role": role, "iss": secrets.ISSUER, "iat": now, "exp": now + secrets.FIVE_YEARS}
    if kid is None:
        return jwt.encode(payload, key, algorithm="HS256")
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": kid})


def _jwt_secret(env: Mapping[str, str], facts: DbFacts, now: int) -> Prepared:
    new = _fresh("JWT_SECRET")
    values = {
        "JWT_SECRET": new,
        "ANON_KEY": _sign("anon", new, None, now),
        "SERVICE_ROLE_KEY": _sign("service_role", new, None, now),
    }
    for key, is_jwks in (("JWT_KEYS", False), ("JWT_JWKS", True)):
        if env.get(key):
            values[key] = _with_oct(env[key], new, is_jwks)
    settings = {JWT_SETTING: new} if facts.jwt_in_db else {}
    from controller import pgroles

    change = SecretChange(
        "JWT_SECRET",
        sorted(values),
        pgroles.masked_sql([], settings),
        ["ANON_KEY", "SERVICE_ROLE_KEY"],
        ["sessions signed with the old secret stop verifying: users sign in again"],
    )
    return Prepared(change, values, settings=settings)


def _jwt_keys(env: Mapping[str, str], finish: bool, now: int) -> Prepared:
    keys = json.loads(env["JWT_KEYS"])
    jwks = json.loads(env.get("JWT_JWKS") or '{"keys": []}')
    ec_private = [k for k in keys if isinstance(k, dict) and k.get("kty") == "EC"]
    signing = [k for k in ec_private if "sign" in (k.get("key_ops") or ["sign"])]
    if not signing:
        raise UsageError("JWT_KEYS holds no EC signing key: nothing to rotate")
    current = signing[0]
    if finish:
        kids = {current.get("kid")}
        old = [k for k in ec_private if k.get("kid") not in kids]
        if not old:
            raise UsageError("JWT_KEYS holds no previous key: nothing to finish")
        new_keys = [k for k in keys if not (k.get("kty") == "EC" and k.get("kid") not in kids)]
        new_jwks = {
            **jwks,
            "keys": [
                k for k in jwks["keys"] if not (k.get("kty") == "EC" and k.get("kid") not in kids)
            ],
        }
        values = {
            "JWT_KEYS": json.dumps(new_keys, separators=(",", ":")),
            "JWT_JWKS": json.dumps(new_jwks, separators=(",", ":")),
        }
        note = (
            f"the previous signing key(s) {', '.join(str(k.get('kid')) for k in old)} are gone: "
            "tokens they signed no longer verify"
        )
        return Prepared(SecretChange("JWT_KEYS", sorted(values), notes=[note]), values)
    private = ec.generate_private_key(ec.SECP256R1())
    kid = _random.token_hex(16)
    extra = {"kid": kid, "alg": "ES256", "use": "sig"}
    private_jwk = {
        **json.loads(ECAlgorithm.to_jwk(private)),
        **extra,
        "key_ops": ["sign", "verify"],
    }
    public_jwk = {
        **json.loads(ECAlgorithm.to_jwk(private.public_key())),
        **extra,
        "key_ops": ["verify"],
    }
    # The previous keys stay, for verifying only: sessions they signed remain valid until
    # `rotate NAME JWT_KEYS --finish`.
    demoted = [{**k, "key_ops": ["verify"]} if k.get("kty") == "EC" else k for k in keys]
    values = {
        "JWT_KEYS": json.dumps([private_jwk, *demoted], separators=(",", ":")),
        "JWT_JWKS": json.dumps(
            {**jwks, "keys": [public_jwk, *jwks.get("keys", [])]}, separators=(",", ":")
        ),
    }
    for key, role in (
        ("ANON_KEY_ASYMMETRIC", "anon"),
        ("SERVICE_ROLE_KEY_ASYMMETRIC", "service_role"),
    ):
        if key in env:
            values[key] = _sign(role, private, kid, now)
    change = SecretChange(
        "JWT_KEYS",
        sorted(values),
        client_keys=[
            k for k in ("ANON_KEY_ASYMMETRIC", "SERVICE_ROLE_KEY_ASYMMETRIC") if k in values
        ],
        notes=[
            f"new signing key {kid}; the previous key stays in JWT_JWKS so issued sessions keep "
            "verifying: run `rotate NAME JWT_KEYS --finish` once clients have moved on"
        ],
    )
    return Prepared(change, values)


def prepare(
    key: str, env: Mapping[str, str], facts: DbFacts, now: int, finish: bool = False
) -> Prepared:
    """The rotation of one secret (from ``normalise``)."""
    from controller import pgroles

    if key == "POSTGRES_PASSWORD":
        new = _fresh(key)
        notes = []
        if facts.pooler:
            notes.append("Supavisor's stored tenant is reset; it is made again when it starts")
        change = SecretChange(
            key,
            [key],
            pgroles.masked_sql(facts.roles, []),
            [],
            [*notes, f"clients to update: {_CLIENTS[key]}"],
        )
        return Prepared(change, {key: new}, role_password=new, pooler_reset=facts.pooler)
    if key == "JWT_SECRET":
        return _jwt_secret(env, facts, now)
    if key == "JWT_KEYS":
        return _jwt_keys(env, finish, now)
    new = _fresh(key)
    notes = [f"clients to update: {_CLIENTS[key]}"] if key in _CLIENTS else []
    client_keys = [key] if key.startswith("SUPABASE_") else []
    pooler = key == "VAULT_ENC_KEY" and facts.pooler
    if pooler:
        notes.append("Supavisor's tenant (encrypted with this key) is reset and made again")
    if key == "REALTIME_DB_ENC_KEY":
        # Realtime's self-host seeding (SEED_SELF_HOST) deletes and re-creates its tenant at
        # every start, encrypting its settings with the key it is given.
        notes.append("Realtime re-creates its tenant with the new key when it starts")
    caddy = key == "DASHBOARD_PASSWORD"
    if caddy:
        notes.append("Caddy's basic auth for Studio takes the new password live (no restart)")
    return Prepared(
        SecretChange(key, [key], [], client_keys, notes),
        {key: new},
        pooler_reset=pooler,
        caddy=caddy,
    )


def copy_needles(keys: Iterable[str], env: Mapping[str, str]) -> dict[str, str]:
    """Old values worth looking for inside the database before rotating ``keys``."""
    wanted = {
        "JWT_SECRET": ("JWT_SECRET", "ANON_KEY", "SERVICE_ROLE_KEY"),
        "JWT_KEYS": ("ANON_KEY_ASYMMETRIC", "SERVICE_ROLE_KEY_ASYMMETRIC"),
        "SUPABASE_PUBLISHABLE_KEY": ("SUPABASE_PUBLISHABLE_KEY",),
        "SUPABASE_SECRET_KEY": ("SUPABASE_SECRET_KEY",),
    }
    out: dict[str, str] = {}
    for key in keys:
        for name in wanted.get(key, ()):
            if env.get(name):
                out[name] = env[name]
    return out


def prepare_all(
    keys: Iterable[str],
    env: Mapping[str, str],
    facts: DbFacts,
    now: int,
    finish: bool = False,
    given: Mapping[str, str] | None = None,
) -> tuple[list[Prepared], dict[str, str]]:
    """Every secret's rotation and the .env values after all of them. One after the other, each
    on the values the previous ones made: JWT_KEYS rotated with JWT_SECRET carries the new
    secret. ``given``: values to use instead of generated ones."""
    prepared: list[Prepared] = []
    values = dict(env)
    for key in keys:
        item = prepare(key, values, facts, now, finish)
        for name, value in (given or {}).items():
            if name in item.new_env:
                item.new_env[name] = value
        prepared.append(item)
        values.update(item.new_env)
    return prepared, values
