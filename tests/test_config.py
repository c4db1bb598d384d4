"""Settings from options, environment and the TOML file; names."""

import pytest

from controller.config import load_settings
from controller.errors import UsageError
from controller.names import validate_name


def test_file_then_env_then_option(tmp_path):
    (tmp_path / "config.toml").write_text(
        'domain = "example.dev"\nscheme = "https"\n[caddy]\nadmin = "unix//run/caddy.sock"\n'
        '[ports]\nrange = "21000-21999"\n'
    )
    settings = load_settings(root=tmp_path, env={})
    assert settings.domain == "example.dev"
    assert settings.caddy_admin == "unix//run/caddy.sock"
    assert settings.port_range == (21000, 21999)
    assert settings.public_origin("shop.example.dev") == "https://shop.example.dev"
    env = {"SUPABASE_MANAGER_SCHEME": "http", "SUPABASE_MANAGER_PUBLIC_PORT": "8080"}
    settings = load_settings(root=tmp_path, env=env)
    assert settings.public_origin("shop.example.dev") == "http://shop.example.dev:8080"


@pytest.mark.parametrize(
    ("env", "word"),
    [
        ({"SUPABASE_MANAGER_PORT_RANGE": "30000-20000"}, "port range"),
        ({"SUPABASE_MANAGER_SCHEME": "ftp"}, "scheme"),
        ({"SUPABASE_MANAGER_DOMAIN": "bad domain"}, "domain"),
        ({"SUPABASE_MANAGER_CONFIG": "/nonexistent/config.toml"}, "does not exist"),
    ],
)
def test_bad_settings_are_usage_errors(tmp_path, env, word):
    with pytest.raises(UsageError, match=word):
        load_settings(root=tmp_path, env=env)


def test_broken_toml_names_the_file(tmp_path):
    (tmp_path / "config.toml").write_text("domain = \n")
    with pytest.raises(UsageError, match=r"config\.toml"):
        load_settings(root=tmp_path, env={})


@pytest.mark.parametrize("name", ["shop", "a", "client-42", "x" * 40])
def test_good_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Shop", "1shop", "shop-", "sh_op", "shop.dev", "x" * 41, "-a", "ümlaut"]
)
def test_bad_names(name):
    with pytest.raises(UsageError):
        validate_name(name)


@pytest.mark.parametrize(
    ("toml", "word"),
    [
        ("domain = 5\n", "invalid domain 5"),
        ('domain = "-shop.dev"\n', "invalid domain"),
        ('domain = "shop-.dev"\n', "invalid domain"),
        ('domain = "b\u00fccher.dev"\n', "xn--"),
        (f'domain = "{"a" * 64}.dev"\n', "invalid domain"),
        ("public_port = 0\n", "invalid public port 0"),
        ("public_port = 70000\n", "invalid public port"),
        ('public_port = "\u0668\u0660"\n', "invalid public port"),
        ("public_port = true\n", "invalid public port"),
        ("scheme = 1\n", "invalid scheme"),
        ("[caddy]\nadmin = []\n", "invalid caddy admin"),
    ],
)
def test_loose_config_values_are_refused(tmp_path, toml, word):
    (tmp_path / "config.toml").write_text(toml)
    with pytest.raises(UsageError, match=word):
        load_settings(root=tmp_path, env={})


def test_good_config_values_still_pass(tmp_path):
    (tmp_path / "config.toml").write_text(
        'domain = "xn--bcher-kva.example"\npublic_port = 8443\n[caddy]\nadmin = "http://x:1"\n'
    )
    settings = load_settings(root=tmp_path, env={"SUPABASE_MANAGER_DOMAIN": ""})
    assert (settings.domain, settings.public_port) == ("xn--bcher-kva.example", 8443)


def test_a_binary_config_file_is_a_usage_error(tmp_path):
    (tmp_path / "config.toml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(UsageError, match="not UTF-8"):
        load_settings(root=tmp_path, env={})


def test_an_empty_root_never_falls_back_to_the_default(tmp_path):
    with pytest.raises(UsageError, match="--root is empty"):
        load_settings(root="", env={})
    with pytest.raises(UsageError, match="SUPABASE_MANAGER_ROOT"):
        load_settings(env={"SUPABASE_MANAGER_ROOT": " "})
