"""Per-instance secrets and API keys, and the rules their values follow.

Which variables count as secret is controller.envpolicy.is_secret.

Every value is generated from the ``secrets`` module's CSPRNG and uses only letters and digits (or
hex), so it survives unquoted in a .env file, in postgres:// URLs and in Kong's shell-expanded
configuration. JWTs are made with PyJWT; the ES256 key pair with ``cryptography``.
"""

from __future__ import annotations

import base64
import json
import re
import secrets as _random
import string
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

# PyJWT and cryptography (~40 ms) are imported where they are used: a create starts hashing its
# new dashboard password with only generate_secrets imported, and checks that need no JWT stay
# light.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

FIVE_YEARS = int(5 * 365.25 * 24 * 3600)
ISSUER = "supabase"
_ALNUM = string.ascii_letters + string.digits

# The new-style keys come as a set: one EC key pair behind all of them.
NEW_STYLE_KEYS = (
    "JWT_KEYS",
    "JWT_JWKS",
    "ANON_KEY_ASYMMETRIC",
    "SERVICE_ROLE_KEY_ASYMMETRIC",
    "SUPABASE_PUBLISHABLE_KEY",
    "SUPABASE_SECRET_KEY",
)
LEGACY_KEYS = ("JWT_SECRET", "ANON_KEY", "SERVICE_ROLE_KEY")


def _alnum(length: int) -> str:
    return "".join(_random.choice(_ALNUM) for _ in range(length))


def _hex(length: int) -> str:
    return _random.token_hex(length // 2)


# Simple secrets: key -> generator. (JWTs and the new-style keys are made in generate_secrets.)
_SIMPLE = {
    "POSTGRES_PASSWORD": lambda: _hex(48),
    "SECRET_KEY_BASE": lambda: _alnum(64),
    "REALTIME_DB_ENC_KEY": lambda: _hex(16),
    "VAULT_ENC_KEY": lambda: _hex(32),
    "PG_META_CRYPTO_KEY": lambda: _alnum(40),
    "LOGFLARE_PUBLIC_ACCESS_TOKEN": lambda: _alnum(40),
    "LOGFLARE_PRIVATE_ACCESS_TOKEN": lambda: _alnum(40),
    "LOGFLARE_API_KEY": lambda: _alnum(40),  # older templates
    "LOGFLARE_LOGGER_BACKEND_API_KEY": lambda: _alnum(40),
    "S3_PROTOCOL_ACCESS_KEY_ID": lambda: _hex(32),
    "S3_PROTOCOL_ACCESS_KEY_SECRET": lambda: _hex(64),
    "MINIO_ROOT_PASSWORD": lambda: _hex(32),
    "DASHBOARD_PASSWORD": lambda: _alnum(32),
    "POOLER_TENANT_ID": lambda: "t" + _hex(16),
}

GENERATED = frozenset(_SIMPLE) | frozenset(LEGACY_KEYS) | frozenset(NEW_STYLE_KEYS)

# --- constraints --------------------------------------------------------------------------------

_URL_SAFE = re.compile(r"^[A-Za-z0-9._~-]+$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")

# key -> (minimum length, exact length or None, allowed-empty)
SECRET_CONSTRAINTS: dict[str, tuple[int, int | None, bool]] = {
    "POSTGRES_PASSWORD": (16, None, False),
    "JWT_SECRET": (32, None, False),
    "ANON_KEY": (1, None, False),
    "SERVICE_ROLE_KEY": (1, None, False),
    "SECRET_KEY_BASE": (64, None, False),
    "REALTIME_DB_ENC_KEY": (16, 16, False),
    "VAULT_ENC_KEY": (32, 32, False),
    "PG_META_CRYPTO_KEY": (32, None, False),
    "LOGFLARE_PUBLIC_ACCESS_TOKEN": (32, None, False),
    "LOGFLARE_PRIVATE_ACCESS_TOKEN": (32, None, False),
    "S3_PROTOCOL_ACCESS_KEY_ID": (16, None, False),
    "S3_PROTOCOL_ACCESS_KEY_SECRET": (32, None, False),
    "MINIO_ROOT_PASSWORD": (8, None, False),
    "DASHBOARD_PASSWORD": (8, None, False),
    # New-style keys are optional: empty turns the feature off.
    "JWT_KEYS": (0, None, True),
    "JWT_JWKS": (0, None, True),
    "ANON_KEY_ASYMMETRIC": (0, None, True),
    "SERVICE_ROLE_KEY_ASYMMETRIC": (0, None, True),
    "SUPABASE_PUBLISHABLE_KEY": (0, None, True),
    "SUPABASE_SECRET_KEY": (0, None, True),
}


def check_secret(key: str, value: str) -> str | None:
    """What is wrong with ``value`` for the secret ``key`` (never quoting it), or None."""
    rule = SECRET_CONSTRAINTS.get(key)
    if rule is None:
        return None
    minimum, exact, may_be_empty = rule
    if not value:
        return None if may_be_empty else "must not be empty"
    if exact is not None and len(value) != exact:
        return f"must be exactly {exact} characters long (it has {len(value)})"
    if len(value) < minimum:
        return f"must be at least {minimum} characters long (it has {len(value)})"
    if key == "POSTGRES_PASSWORD" and not _URL_SAFE.match(value):
        return "may only use letters, digits and . _ ~ - (it goes unescaped into postgres:// URLs)"
    if key in ("S3_PROTOCOL_ACCESS_KEY_ID", "S3_PROTOCOL_ACCESS_KEY_SECRET") and not _HEX.match(
        value
    ):
        return "must be hexadecimal"
    if (
        key
        in (
            "ANON_KEY",
            "SERVICE_ROLE_KEY",
            "ANON_KEY_ASYMMETRIC",
            "SERVICE_ROLE_KEY_ASYMMETRIC",
        )
        and value.count(".") != 2
    ):
        return "is not a JWT (three dot-separated parts)"
    if key == "JWT_KEYS":
        try:
            parsed = json.loads(value)
        except ValueError:
            return "is not JSON (a JSON array of JWKs)"
        if not isinstance(parsed, list) or not all(isinstance(k, dict) for k in parsed):
            return "must be a JSON array of JWKs"
    if key == "JWT_JWKS":
        try:
            parsed = json.loads(value)
        except ValueError:
            return 'is not JSON (a JWKS: {"keys": [...]})'
        if not isinstance(parsed, dict) or not isinstance(parsed.get("keys"), list):
            return 'must be a JWKS: {"keys": [...]}'
    if key == "SUPABASE_PUBLISHABLE_KEY" and not value.startswith("sb_publishable_"):
        return "must start with sb_publishable_"
    if key == "SUPABASE_SECRET_KEY" and not value.startswith("sb_secret_"):
        return "must start with sb_secret_"
    if any(char in value for char in "\"'`$\\") and key not in ("JWT_KEYS", "JWT_JWKS"):
        return "must not contain quotes, backslashes, backticks or $"
    return None


# --- generation ---------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _legacy_jwt(role: str, secret: str, now: int) -> str:
    import jwt

    payload = {"role": role, "iss": ISSUER, "iat": now, "exp": now + FIVE_YEARS}
    return jwt.encode(payload, secret, algorithm="HS256")


def _oct_jwk(secret: str) -> dict:
    return {"kty": "oct", "k": _b64url(secret.encode()), "alg": "HS256"}


def _ec_key_from(existing: Mapping[str, str]) -> tuple[ec.EllipticCurvePrivateKey, str] | None:
    """The EC private key and kid held in an existing JWT_KEYS, if any."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    try:
        for jwk in json.loads(existing.get("JWT_KEYS") or "[]"):
            if isinstance(jwk, dict) and jwk.get("kty") == "EC" and "d" in jwk:
                key = ECAlgorithm.from_jwk(json.dumps(jwk))
                if isinstance(key, ec.EllipticCurvePrivateKey):
                    return key, str(jwk.get("kid") or "")
    except (ValueError, TypeError, jwt.PyJWTError):
        return None
    return None


def _new_style(secret: str, now: int, existing: Mapping[str, str]) -> dict[str, str]:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    found = _ec_key_from(existing)
    if found and found[1]:
        private, kid = found
    else:
        private, kid = ec.generate_private_key(ec.SECP256R1()), _random.token_hex(16)
    private_jwk = json.loads(ECAlgorithm.to_jwk(private))
    public_jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    extra = {"kid": kid, "alg": "ES256", "use": "sig"}
    private_jwk.update(extra, key_ops=["sign", "verify"])
    public_jwk.update(extra, key_ops=["verify"])
    oct_jwk = _oct_jwk(secret)
    values = {
        "JWT_KEYS": json.dumps(
            [private_jwk, {**oct_jwk, "key_ops": ["verify"]}], separators=(",", ":")
        ),
        "JWT_JWKS": json.dumps({"keys": [public_jwk, oct_jwk]}, separators=(",", ":")),
        "SUPABASE_PUBLISHABLE_KEY": "sb_publishable_" + _alnum(32),
        "SUPABASE_SECRET_KEY": "sb_secret_" + _alnum(32),
    }
    for key, role in (
        ("ANON_KEY_ASYMMETRIC", "anon"),
        ("SERVICE_ROLE_KEY_ASYMMETRIC", "service_role"),
    ):
        payload = {"role": role, "iss": ISSUER, "iat": now, "exp": now + FIVE_YEARS}
        values[key] = jwt.encode(payload, private, algorithm="ES256", headers={"kid": kid})
    return values


def generate_secrets(
    keys: Iterable[str],
    now: int | None = None,
    existing: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Fresh values for every secret variable among ``keys`` (e.g. the .env.example keys).

    ``existing``: values to keep and build on (an instance's current .env). Keys present there
    with a non-empty value are not returned; the rest are generated consistently with them: a new
    ANON_KEY is signed with the existing JWT_SECRET, new asymmetric keys use the EC key already in
    JWT_KEYS, and a new JWT_KEYS/JWT_JWKS pair carries the existing JWT_SECRET.
    """
    wanted = [key for key in dict.fromkeys(keys) if key in GENERATED]
    existing = {k: v for k, v in (existing or {}).items() if v}
    now = int(time.time()) if now is None else int(now)
    missing = [key for key in wanted if key not in existing]
    out: dict[str, str] = {}
    for key in missing:
        if key in _SIMPLE:
            out[key] = _SIMPLE[key]()
    need_secret = any(k in missing for k in LEGACY_KEYS + NEW_STYLE_KEYS)
    secret = existing.get("JWT_SECRET") or (_alnum(48) if need_secret else "")
    if "JWT_SECRET" in missing:
        out["JWT_SECRET"] = secret
    if "ANON_KEY" in missing:
        out["ANON_KEY"] = _legacy_jwt("anon", secret, now)
    if "SERVICE_ROLE_KEY" in missing:
        out["SERVICE_ROLE_KEY"] = _legacy_jwt("service_role", secret, now)
    new_missing = [key for key in NEW_STYLE_KEYS if key in missing]
    if new_missing:
        # JWT_KEYS/JWT_JWKS must describe the key the asymmetric JWTs are signed with: when one of
        # the pair is missing, both are made again (from the existing EC key when there is one).
        fresh = _new_style(secret, now, existing)
        for key in new_missing:
            out[key] = fresh[key]
        if "JWT_KEYS" in new_missing and "JWT_JWKS" in wanted and "JWT_JWKS" not in new_missing:
            out["JWT_JWKS"] = fresh["JWT_JWKS"]
        if (
            "JWT_JWKS" in new_missing
            and "JWT_KEYS" in wanted
            and "JWT_KEYS" not in new_missing
            and _ec_key_from(existing) is None
        ):
            out["JWT_KEYS"] = fresh["JWT_KEYS"]
    return out


def verify_with_jwks(token: str, jwks: str, role: str | None = None) -> bool:
    """Whether ``token`` is an ES256 JWT signed by a key of the JWKS text ``jwks`` (and role)."""
    import jwt
    from jwt.algorithms import ECAlgorithm

    try:
        header = jwt.get_unverified_header(token)
        keys = json.loads(jwks)["keys"]
        for jwk in keys:
            if jwk.get("kty") != "EC" or jwk.get("kid") != header.get("kid"):
                continue
            key = ECAlgorithm.from_jwk(json.dumps(jwk))
            claims = jwt.decode(token, key, algorithms=["ES256"], options={"verify_aud": False})
            return role is None or claims.get("role") == role
    except (ValueError, KeyError, TypeError, AttributeError, jwt.PyJWTError):
        return False
    return False
