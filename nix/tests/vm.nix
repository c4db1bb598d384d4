# NixOS VM test of nix/module.nix: Docker, Caddy, the units, the folders, the Caddy import, and an
# instance created (not started) from a template imported from a local folder.
#
#   nix build .#checks.x86_64-linux.vm              (needs KVM)
#   pkgs.testers.runNixOSTest ./nix/tests/vm.nix    (without the flake)
#
# No image is pulled (the VM has no network) and nothing is started: `create --no-start`.
{ ... }:
{
  name = "supabase-manager";

  nodes.machine =
    { ... }:
    {
      imports = [ ../module.nix ];

      virtualisation.memorySize = 2048;
      virtualisation.diskSize = 4096;

      services.supabase-manager = {
        enable = true;
        domain = "example.test";
        # Plain HTTP: the VM cannot reach an ACME CA.
        scheme = "http";
      };
    };

  testScript = ''
    import json

    machine.wait_for_unit("docker.service")
    machine.wait_for_unit("caddy.service")
    machine.wait_for_unit("supabase-manager-start.service")
    machine.wait_for_unit("supabase-manager-sync.service")
    machine.succeed("systemctl list-timers --all | grep -F supabase-manager-maintenance.timer")

    with subtest("folders"):
        def mode(path):
            return machine.succeed(f"stat -c '%a %U %G' {path}").strip()
        assert mode("/var/lib/supabase") == "711 root root", mode("/var/lib/supabase")
        assert mode("/var/lib/supabase/instances") == "700 root root"
        assert mode("/var/lib/supabase/templates") == "700 root root"
        assert mode("/var/lib/supabase/caddy") == "2750 root caddy"

    with subtest("config file and environment"):
        machine.succeed("grep -x 'domain = \"example.test\"' /etc/supabase-manager/config.toml")
        machine.succeed("grep -x 'scheme = \"http\"' /etc/supabase-manager/config.toml")
        machine.succeed("grep -x 'public_port = 80' /etc/supabase-manager/config.toml")
        machine.succeed("bash -lc 'test \"$SUPABASE_MANAGER_ROOT\" = /var/lib/supabase'")
        machine.succeed("bash -lc 'test \"$SUPABASE_MANAGER_CONFIG\" = /etc/supabase-manager/config.toml'")

    with subtest("Caddyfile imports the snippets and names the public server"):
        machine.succeed("grep -F 'import /var/lib/supabase/caddy/*.conf' /etc/caddy/caddy_config")
        machine.succeed("grep -F 'per_host' /etc/caddy/caddy_config")
        machine.succeed("grep -F 'grace_period 10s' /etc/caddy/caddy_config")

    with subtest("health check runs"):
        machine.succeed("supabase-manager check")

    with subtest("template from a local folder, instance created without starting"):
        machine.succeed(
            "mkdir -p /tmp/upstream/docker/volumes/api",
            "cat > /tmp/upstream/docker/docker-compose.yml <<'EOF'\n"
            "name: supabase\n"
            "services:\n"
            "  studio:\n"
            "    container_name: supabase-studio\n"
            "    image: supabase/studio:fake\n"
            "  kong:\n"
            "    container_name: supabase-kong\n"
            "    image: kong:fake\n"
            "    ports:\n"
            "      - ''${KONG_HTTP_PORT}:8000/tcp\n"
            "  db:\n"
            "    container_name: supabase-db\n"
            "    image: supabase/postgres:fake\n"
            "EOF",
            "printf 'POSTGRES_PASSWORD=x\\nJWT_SECRET=x\\nANON_KEY=x\\nSERVICE_ROLE_KEY=x\\n"
            "DASHBOARD_USERNAME=supabase\\nDASHBOARD_PASSWORD=x\\nKONG_HTTP_PORT=8000\\n'"
            " > /tmp/upstream/docker/.env.example",
        )
        machine.succeed("supabase-manager template import /tmp/upstream/docker --name local")
        machine.succeed("supabase-manager create demo --template local --no-start")
        machine.succeed("test -d /var/lib/supabase/instances/demo")
        assert mode("/var/lib/supabase/instances/demo") == "700 root root"
        machine.succeed("test -f /var/lib/supabase/caddy/demo.conf")
        assert machine.succeed("stat -c %G /var/lib/supabase/caddy/demo.conf").strip() == "caddy"
        # Caddy (user caddy) can read what it imports.
        machine.succeed("runuser -u caddy -- cat /var/lib/supabase/caddy/demo.conf")
        listed = json.loads(machine.succeed("supabase-manager --json list"))
        assert "demo" in json.dumps(listed), listed

    with subtest("routes come back after a Caddy reload and a restart"):
        machine.succeed("systemctl reload caddy")
        # ReloadPropagatedFrom=caddy.service: the sync unit was reloaded, i.e. ran `caddy sync`.
        machine.wait_until_succeeds("journalctl -u supabase-manager-sync.service | grep -qi reload")
        machine.succeed("systemctl restart caddy")
        machine.wait_for_unit("supabase-manager-sync.service")
        machine.wait_until_succeeds("curl -sf http://localhost:2019/config/ | grep -F demo.example.test")
  '';
}
