"""Per-instance secrets: every constraint of the upstream template, JWTs that verify, no reuse."""

import json
import time

import jwt
import pytest
from jwt.algorithms import ECAlgorithm

from controller.envpolicy import is_secret
from controller.secrets import (
    FIVE_YEARS,
    GENERATED,
    NEW_STYLE_KEYS,
    check_secret,
    generate_secrets,
    verify_with_jwks,
)

ALL_KEYS = [
    "POSTGRES_PASSWORD",
    "JWT_SECRET",
    "ANON_KEY",
    "SERVICE_ROLE_KEY",
    "SECRET_KEY_BASE",
    "REALTIME_DB_ENC_KEY",
    "VAULT_ENC_KEY",
    "PG_META_CRYPTO_KEY",
    "LOGFLARE_PUBLIC_ACCESS_TOKEN",
    "LOGFLARE_PRIVATE_ACCESS_TOKEN",
    "S3_PROTOCOL_ACCESS_KEY_ID",
    "S3_PROTOCOL_ACCESS_KEY_SECRET",
    "MINIO_ROOT_PASSWORD",
    "DASHBOARD_PASSWORD",
    "POOLER_TENANT_ID",
    *NEW_STYLE_KEYS,
    # not secrets: left alone
    "POSTGRES_DB",
    "SITE_URL",
]


@pytest.fixture(scope="module")
def values():
    return generate_secrets(ALL_KEYS, now=int(time.time()))


def test_every_secret_key_gets_a_value_and_others_none(values):
    assert set(values) == set(ALL_KEYS) - {"POSTGRES_DB", "SITE_URL"}
    assert all(values.values())


def test_constraints_from_the_template_notes(values):
    assert all(c in "0123456789abcdef" for c in values["POSTGRES_PASSWORD"])
    assert len(values["POSTGRES_PASSWORD"]) >= 32
    assert len(values["JWT_SECRET"]) >= 32
    assert len(values["SECRET_KEY_BASE"]) >= 64
    assert len(values["REALTIME_DB_ENC_KEY"]) == 16
    assert len(values["VAULT_ENC_KEY"]) == 32
    assert len(values["PG_META_CRYPTO_KEY"]) >= 32
    assert len(values["LOGFLARE_PUBLIC_ACCESS_TOKEN"]) >= 32
    assert len(values["LOGFLARE_PRIVATE_ACCESS_TOKEN"]) >= 32
    assert values["LOGFLARE_PUBLIC_ACCESS_TOKEN"] != values["LOGFLARE_PRIVATE_ACCESS_TOKEN"]
    assert len(values["S3_PROTOCOL_ACCESS_KEY_ID"]) == 32
    int(values["S3_PROTOCOL_ACCESS_KEY_ID"], 16)
    assert len(values["S3_PROTOCOL_ACCESS_KEY_SECRET"]) == 64
    int(values["S3_PROTOCOL_ACCESS_KEY_SECRET"], 16)
    assert len(values["MINIO_ROOT_PASSWORD"]) >= 8
    assert len(values["DASHBOARD_PASSWORD"]) >= 8
    assert values["SUPABASE_PUBLISHABLE_KEY"].startswith("sb_publishable_")
    assert values["SUPABASE_SECRET_KEY"].startswith("sb_secret_")
    for key, value in values.items():
        assert check_secret(key, value) is None, key
        # Nothing a shell, a URL or a .env file would read differently.
        if key not in ("JWT_KEYS", "JWT_JWKS"):
            assert all(c.isalnum() or c in "-_." for c in value), key


def test_legacy_jwts_verify_with_jwt_secret(values):
    now = time.time()
    for key, role in (("ANON_KEY", "anon"), ("SERVICE_ROLE_KEY", "service_role")):
        assert jwt.get_unverified_header(values[key])["alg"] == "HS256"
        claims = jwt.decode(values[key], values["JWT_SECRET"], algorithms=["HS256"])
        assert claims["role"] == role
        assert claims["iss"] == "supabase"
        assert abs(claims["iat"] - now) < 60
        assert claims["exp"] - claims["iat"] == FIVE_YEARS
        assert claims["exp"] > now + 4.9 * 365 * 86400
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(values[key], "x" * 40, algorithms=["HS256"])


def test_asymmetric_keys_are_consistent(values):
    keys = json.loads(values["JWT_KEYS"])
    jwks = json.loads(values["JWT_JWKS"])
    private = next(k for k in keys if k["kty"] == "EC")
    public = next(k for k in jwks["keys"] if k["kty"] == "EC")
    assert private["crv"] == public["crv"] == "P-256"
    assert private["alg"] == public["alg"] == "ES256"
    assert private["kid"] == public["kid"] and private["kid"]
    assert "d" in private and "d" not in public
    assert (private["x"], private["y"]) == (public["x"], public["y"])
    # The legacy HS256 secret rides along as an oct key in both.
    for collection in (keys, jwks["keys"]):
        octs = [k for k in collection if k["kty"] == "oct"]
        assert len(octs) == 1
        secret = jwt.algorithms.HMACAlgorithm.from_jwk(json.dumps(octs[0]))
        assert secret == values["JWT_SECRET"].encode()
    for key, role in (
        ("ANON_KEY_ASYMMETRIC", "anon"),
        ("SERVICE_ROLE_KEY_ASYMMETRIC", "service_role"),
    ):
        header = jwt.get_unverified_header(values[key])
        assert header["alg"] == "ES256" and header["kid"] == public["kid"]
        claims = jwt.decode(
            values[key], ECAlgorithm.from_jwk(json.dumps(public)), algorithms=["ES256"]
        )
        assert claims["role"] == role and claims["iss"] == "supabase"
        assert claims["exp"] - claims["iat"] == FIVE_YEARS
        assert verify_with_jwks(values[key], values["JWT_JWKS"], role)
        assert not verify_with_jwks(values[key], values["JWT_JWKS"], "other")


def test_two_generations_share_nothing(values):
    other = generate_secrets(ALL_KEYS)
    for key in values:
        assert values[key] != other[key], key
    assert not verify_with_jwks(other["ANON_KEY_ASYMMETRIC"], values["JWT_JWKS"])


def test_new_style_keys_only_when_the_template_has_them():
    values = generate_secrets(["JWT_SECRET", "ANON_KEY", "SERVICE_ROLE_KEY"])
    assert set(values) == {"JWT_SECRET", "ANON_KEY", "SERVICE_ROLE_KEY"}


def test_existing_values_are_kept_and_built_on(values):
    kept = {k: values[k] for k in ("JWT_SECRET", "JWT_KEYS", "POSTGRES_PASSWORD")}
    fresh = generate_secrets(ALL_KEYS, existing=kept)
    assert not set(fresh) & set(kept)
    claims = jwt.decode(fresh["ANON_KEY"], values["JWT_SECRET"], algorithms=["HS256"])
    assert claims["role"] == "anon"
    # New asymmetric tokens are signed with the EC key already in JWT_KEYS.
    assert verify_with_jwks(fresh["ANON_KEY_ASYMMETRIC"], values["JWT_JWKS"], "anon")
    assert verify_with_jwks(fresh["SERVICE_ROLE_KEY_ASYMMETRIC"], fresh["JWT_JWKS"])


@pytest.mark.parametrize(
    ("key", "value", "word"),
    [
        ("JWT_SECRET", "short", "at least 32"),
        ("JWT_SECRET", "", "empty"),
        ("POSTGRES_PASSWORD", "has/slash@and:colon-long-enough", "letters, digits"),
        ("POSTGRES_PASSWORD", "short", "at least 16"),
        ("REALTIME_DB_ENC_KEY", "x" * 15, "exactly 16"),
        ("VAULT_ENC_KEY", "x" * 33, "exactly 32"),
        ("SECRET_KEY_BASE", "x" * 63, "at least 64"),
        ("PG_META_CRYPTO_KEY", "x" * 31, "at least 32"),
        ("LOGFLARE_PUBLIC_ACCESS_TOKEN", "x" * 10, "at least 32"),
        ("S3_PROTOCOL_ACCESS_KEY_SECRET", "z" * 64, "hexadecimal"),
        ("MINIO_ROOT_PASSWORD", "1234567", "at least 8"),
        ("ANON_KEY", "not-a-jwt", "JWT"),
        ("JWT_JWKS", "[]", "JWKS"),
        ("JWT_KEYS", "{", "JSON"),
        ("SUPABASE_SECRET_KEY", "sk_123", "sb_secret_"),
        ("DASHBOARD_PASSWORD", "pa$$word123", "quotes"),
    ],
)
def test_check_secret_refuses(key, value, word):
    problem = check_secret(key, value)
    assert problem and word in problem
    assert value not in problem or not value


def test_optional_new_style_keys_may_be_empty():
    for key in NEW_STYLE_KEYS:
        assert check_secret(key, "") is None


@pytest.mark.parametrize(
    "key",
    [
        *sorted(GENERATED - {"POOLER_TENANT_ID"}),
        "SMTP_PASS",
        "OPENAI_API_KEY",
        "GOOGLE_SECRET",
        "SMS_TWILIO_AUTH_TOKEN",
        "SAML_PRIVATE_KEY",
        "AWS_SECRET_ACCESS_KEY",
        "MY_DB_PASSWORD",
    ],
)
def test_is_secret(key):
    assert is_secret(key)


@pytest.mark.parametrize(
    "key",
    [
        "POSTGRES_DB",
        "POSTGRES_PORT",
        "SITE_URL",
        "DASHBOARD_USERNAME",
        "SMTP_USER",
        "POOLER_TENANT_ID",
        "JWT_EXPIRY",
        "KONG_HTTP_PORT",
        "STUDIO_DEFAULT_PROJECT",
    ],
)
def test_is_not_secret(key):
    assert not is_secret(key)
