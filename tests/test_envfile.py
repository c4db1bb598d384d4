""".env parsing keeps every byte; value validation; which services read a variable."""

import pytest

from controller.envfile import EnvFile, quote_value
from controller.envpolicy import check_text, validate
from controller.envusage import services_using
from controller.secrets import generate_secrets
from tests.world.templates import fixtures_dir

FIXTURES = fixtures_dir()
VERSIONS = ["v0.8.2", "2025-07-15"]


@pytest.mark.parametrize("version", VERSIONS)
def test_round_trip_of_the_upstream_example_is_exact(version):
    text = (FIXTURES / version / ".env.example").read_text()
    env = EnvFile.parse(text)
    assert env.render() == text
    assert env.get("POSTGRES_HOST") == "db"
    assert env.get("MAILER_URLPATHS_INVITE") == "/auth/v1/verify"  # quotes removed
    assert env.get("STUDIO_DEFAULT_ORGANIZATION") == "Default Organization"
    # Commented-out assignments stay comments.
    assert "GOOGLE_ENABLED" not in env
    keys = [
        line.split("=", 1)[0]
        for line in text.splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    ]
    assert env.keys() == list(dict.fromkeys(keys))


def test_set_unset_keep_the_rest():
    text = '# head\nA=1\n\n# about B\nB=\'two words\' # note\nexport C="x\\"y"\n# D=commented\n'
    env = EnvFile.parse(text)
    assert env.get("B") == "two words"
    assert env.get("C") == 'x"y'
    assert env.get("D") is None
    env.set("A", "10")
    env.set("E", '{"json": [1, 2]}')
    env.unset("C")
    out = env.render()
    assert out == (
        "# head\nA=10\n\n# about B\nB='two words' # note\n# D=commented\nE='{\"json\": [1, 2]}'\n"
    )
    assert EnvFile.parse(out).get("E") == '{"json": [1, 2]}'
    env.insert_after("A", "A2", "x y")
    assert env.keys() == ["A", "A2", "B", "E"]


@pytest.mark.parametrize(
    "value",
    ["plain", "two words", "it's", "a'b\"c$d\\e", '{"k":"v"}', "x#y", " lead", ""],
)
def test_quote_value_round_trips(value):
    assert EnvFile.parse(f"K={quote_value(value)}\n").get("K") == value


def test_quoted_values_read_by_docker_compose_unchanged(tmp_path):
    import json
    import subprocess

    values = {"A": "it's a $test", "B": '{"k":"v $x"}', "C": "two words", "D": "a\"b'c"}
    env = EnvFile()
    for key, value in values.items():
        env.set(key, value)
    (tmp_path / ".env").write_text(env.render())
    (tmp_path / "docker-compose.yml").write_text(
        "services:\n  s:\n    image: busybox\n    environment:\n"
        + "".join(f"      {k}: ${{{k}}}\n" for k in values)
    )
    out = subprocess.run(
        ["docker", "compose", "config", "--format", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # `config` prints a literal "$" as "$$" (its output is a compose file again).
    expected = {key: value.replace("$", "$$") for key, value in values.items()}
    assert json.loads(out)["services"]["s"]["environment"] == expected


@pytest.mark.parametrize(
    ("key", "value", "word"),
    [
        ("SITE_URL", "a\nb", "newline"),
        ("SITE_URL", "a\0b", "NUL"),
        ("SITE_URL", "a\rb", "carriage"),
        ("1BAD", "x", "variable name"),
        ("BAD-KEY", "x", "variable name"),
        ("KONG_HTTP_PORT", "80a", "port"),
        ("KONG_HTTP_PORT", "70000", "port"),
        ("KONG_HTTP_PORT", "", "port"),
        ("SITE_URL", "ftp://x", "http"),
        ("API_EXTERNAL_URL", "localhost:8000", "http"),
        ("ADDITIONAL_REDIRECT_URLS", "https://ok.dev,nope", "http"),
        ("ENABLE_EMAIL_SIGNUP", "yes", "true or false"),
        ("DISABLE_SIGNUP", "1", "true or false"),
        ("JWT_EXPIRY", "1h", "whole number"),
        ("JWT_SECRET", "too-short", "at least 32"),
        ("VAULT_ENC_KEY", "x", "exactly 32"),
        ("POSTGRES_PASSWORD", "p@ss/word:with-bad-chars", "letters"),
    ],
)
def test_validate_refuses(key, value, word):
    problem = validate(key, value)
    assert problem and word in problem


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SITE_URL", "https://app.example.dev/path"),
        ("KONG_HTTP_PORT", "20000"),
        ("ENABLE_EMAIL_SIGNUP", "False"),
        ("ADDITIONAL_REDIRECT_URLS", ""),
        ("ADDITIONAL_REDIRECT_URLS", "https://a.dev/**,http://localhost:3000"),
        ("STUDIO_DEFAULT_ORGANIZATION", "Default Organization"),
        ("JWT_SECRET", "x" * 40),
        ("SUPABASE_PUBLISHABLE_KEY", ""),
        ("DOCKER_SOCKET_LOCATION", "/var/run/docker.sock"),
    ],
)
def test_validate_accepts(key, value):
    assert validate(key, value) is None


def test_secret_values_never_appear_in_problems():
    text = "JWT_SECRET=tiny-secret-value\nPOSTGRES_PASSWORD=bad/pw:value-xyz1\nX_PORT=nope\n"
    problems = check_text(text)
    assert len(problems) == 3
    joined = "\n".join(problems)
    assert "tiny-secret-value" not in joined and "bad/pw" not in joined
    assert problems[0].startswith("line 1: JWT_SECRET")
    assert problems[2].startswith("line 3: X_PORT") and "nope" in problems[2]


def test_check_text_whole_file():
    good = generate_secrets(["JWT_SECRET", "ANON_KEY", "SERVICE_ROLE_KEY"])
    text = "".join(f"{k}={v}\n" for k, v in good.items()) + "# comment\n\nSITE_URL=https://x.dev\n"
    assert check_text(text) == []
    swapped = text.replace(good["ANON_KEY"], good["SERVICE_ROLE_KEY"])
    assert any("ANON_KEY does not carry role" in p for p in check_text(swapped))
    other = generate_secrets(["JWT_SECRET"])["JWT_SECRET"]
    assert any(
        "signed with JWT_SECRET" in p for p in check_text(text.replace(good["JWT_SECRET"], other))
    )
    bad = "A=1\nnot an assignment\nA=2\nB='unterminated\n"
    problems = check_text(bad)
    assert "line 2: not KEY=VALUE" in problems
    assert any(p.startswith("line 3: A is already set on line 1") for p in problems)
    assert any(p.startswith("line 4: B") and "unterminated" in p for p in problems)


@pytest.mark.parametrize("version", VERSIONS)
def test_upstream_example_passes_its_own_checks(version):
    # Every value upstream ships (its demo secrets too) meets the rules: a rule that refuses one
    # would refuse a working instance's .env on its next `env edit`.
    assert check_text((FIXTURES / version / ".env.example").read_text()) == []


def test_services_using():
    base = FIXTURES / "v0.8.2"
    files = [base / "docker-compose.yml", base / "docker-compose.logs.yml"]
    assert services_using(["JWT_SECRET"], files) == [
        "auth",
        "functions",
        "realtime",
        "rest",
        "storage",
        "studio",
        "supavisor",
    ]
    # Nested defaults: ${API_GW_HTTP_PORT:-${KONG_HTTP_PORT:-8000}}
    assert services_using(["KONG_HTTP_PORT"], files) == ["api-gw"]
    assert services_using(["LOGFLARE_PUBLIC_ACCESS_TOKEN"], files) == ["analytics", "vector"]
    assert services_using(["POOLER_TENANT_ID", "SITE_URL"], files) == ["auth", "supavisor"]
    assert services_using(["NOT_USED_ANYWHERE"], files) == []
    kong = [base / "docker-compose.yml", base / "docker-compose.kong.yml"]
    assert services_using(["KONG_HTTPS_PORT"], kong) == ["api-gw"]


@pytest.mark.parametrize(
    "key",
    ["COMPOSE_PROFILES", "COMPOSE_PATH_SEPARATOR", "COMPOSE_FILE", "DOCKER_HOST", "DOCKER_CONTEXT"],
)
def test_keys_compose_or_docker_read_are_never_changed(key):
    from controller.envpolicy import change_problem

    assert change_problem(key, "x")
    assert change_problem(key, None)
    # Upstream's own DOCKER_SOCKET_LOCATION is read by neither.
    assert change_problem("DOCKER_SOCKET_LOCATION", "/run/user/1000/docker.sock") is None


@pytest.mark.parametrize(
    ("key", "value", "word"),
    [
        ("POSTGRES_DB", "", "must not be empty"),
        ("DASHBOARD_USERNAME", "", "must not be empty"),
        ("DASHBOARD_USERNAME", "ad min", "login name"),
        ("DASHBOARD_USERNAME", 'a"b', "login name"),
        ("DASHBOARD_PASSWORD", "x" * 73, "72 bytes"),
        ("SITE_URL", "http://x/\udcff", "UTF-8"),
        ("KONG_HTTP_PORT", "\u0668\u0660\u0668\u0660", "port"),
        ("JWT_EXPIRY", "\u0663\u0666\u0660\u0660", "whole number"),
    ],
)
def test_policy_refuses_values_the_instance_cannot_take(key, value, word):
    from controller.envpolicy import change_problem

    problem = validate(key, value)
    assert problem and word in problem
    assert word in change_problem(key, value)


def test_an_edit_is_checked_by_the_same_rules_as_set():
    from controller.envpolicy import edit_problems

    before = {"POSTGRES_DB": "postgres", "COMPOSE_PROJECT_NAME": "a", "POSTGRES_PASSWORD": "p" * 20}
    text = "POSTGRES_DB=postgres\nCOMPOSE_PROJECT_NAME=a\nPOSTGRES_PASSWORD=" + "p" * 20 + "\n"
    assert edit_problems(before, text, EnvFile.parse(text).as_dict()) == []
    for added, word in (
        ("COMPOSE_PROFILES=x\n", "COMPOSE_PROFILES is refused"),
        ("DOCKER_HOST=tcp://h:2375\n", "DOCKER_HOST is refused"),
    ):
        edited = text + added
        (problem,) = edit_problems(before, edited, EnvFile.parse(edited).as_dict())
        assert word in problem
    removed = text.replace("POSTGRES_DB=postgres\n", "")
    (problem,) = edit_problems(before, removed, EnvFile.parse(removed).as_dict())
    assert problem == "POSTGRES_DB cannot be removed: the instance needs it"
    changed = text.replace("p" * 20, "q" * 20)
    (problem,) = edit_problems(before, changed, EnvFile.parse(changed).as_dict())
    assert problem.startswith("POSTGRES_PASSWORD also lives inside the database")


def test_key_names_are_whole_matches():
    from controller.envpolicy import key_problem

    assert key_problem("SITE_URL") is None
    assert key_problem("SITE_URL\n") and key_problem("SITE URL") and key_problem("1X")
