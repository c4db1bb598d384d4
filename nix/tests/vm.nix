# NixOS VM test of nix/module.nix: Docker, Caddy, the hardened units, the folders, the installed
# command's defaults, the Caddy import, and an instance created (not started) from a template
# imported from a local folder, whose live route must come back after every Caddy reload.
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
        backup.enable = true;
        backup.passwordFile = "/etc/supabase-backup-password";
        metrics.enable = true;
      };
      # A test secret; on a real host it would come from outside the Nix store.
      environment.etc."supabase-backup-password".text = "vm-test-password";
    };

  testScript = ''
    import json

    ADMIN = "http://localhost:2019"
    ROUTE = f"{ADMIN}/id/sbm-demo"

    machine.wait_for_unit("docker.service")
    machine.wait_for_unit("caddy.service")
    machine.wait_for_unit("supabase-manager-start.service")
    machine.wait_for_unit("supabase-manager-sync.service")
    machine.succeed("systemctl list-timers --all | grep -F supabase-manager-maintenance.timer")
    machine.succeed("systemctl list-timers --all | grep -F supabase-manager-backup.timer")

    def mode(path):
        return machine.succeed(f"stat -c '%a %U %G' {path}").strip()

    def check_folders():
        # tmpfiles sets these at boot; the program (start --all ran already, create and template
        # import run below) must leave them so.
        assert mode("/var/lib/supabase") == "711 root root", mode("/var/lib/supabase")
        assert mode("/var/lib/supabase/instances") == "700 root root"
        assert mode("/var/lib/supabase/templates") == "700 root root"
        assert mode("/var/lib/supabase/caddy") == "2750 root caddy"
        assert mode("/var/lib/supabase/.docker") == "700 root root"

    with subtest("folders"):
        check_folders()

    with subtest("config file, and the command's defaults without any environment"):
        machine.succeed("grep -x 'domain = \"example.test\"' /etc/supabase-manager/config.toml")
        machine.succeed("grep -x 'scheme = \"http\"' /etc/supabase-manager/config.toml")
        machine.succeed("grep -x 'public_port = 80' /etc/supabase-manager/config.toml")
        # What `sudo supabase-manager` sees: no SUPABASE_MANAGER_* variables at all.
        machine.succeed("env -i /run/current-system/sw/bin/supabase-manager --json list")
        machine.succeed("sudo -i supabase-manager --json list")

    with subtest("Caddyfile imports the snippets and names the public server"):
        machine.succeed("grep -F 'import /var/lib/supabase/caddy/*.conf' /etc/caddy/caddy_config")
        machine.succeed("grep -F 'per_host' /etc/caddy/caddy_config")
        machine.succeed("grep -F 'grace_period 10s' /etc/caddy/caddy_config")
        servers = json.loads(machine.succeed(f"curl -sf {ADMIN}/config/apps/http/servers"))
        assert ":80" in servers["supabase"]["listen"], servers

    with subtest("health check and maintenance run"):
        machine.succeed("supabase-manager check")
        machine.succeed("systemctl start supabase-manager-maintenance.service")

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
        listed = json.loads(machine.succeed("env -i /run/current-system/sw/bin/supabase-manager --json list"))
        assert "demo" in json.dumps(listed), listed
        check_folders()

    with subtest("the live route (by its id) comes back after a reload, a restart, maintenance"):
        machine.succeed(f"curl -sf {ROUTE}")
        # Without its id the route only comes back from the snippet (a reload re-reads it), so
        # only a `caddy sync` after the reload makes the id answer again.
        machine.succeed(f"curl -sf -X DELETE {ROUTE}")
        machine.fail(f"curl -sf {ROUTE}")
        machine.succeed("systemctl reload caddy")
        machine.wait_until_succeeds(f"curl -sf {ROUTE}", timeout=60)

        machine.succeed(f"curl -sf -X DELETE {ROUTE}")
        machine.succeed("systemctl restart caddy")
        machine.wait_for_unit("supabase-manager-sync.service")
        machine.wait_until_succeeds(f"curl -sf {ROUTE}", timeout=60)

        machine.succeed(f"curl -sf -X DELETE {ROUTE}")
        machine.succeed("systemctl start supabase-manager-maintenance.service")
        machine.succeed(f"curl -sf {ROUTE}")

    with subtest("metrics exporter and backup unit"):
        machine.wait_for_unit("supabase-manager-metrics.service")
        machine.wait_for_open_port(9464)
        machine.succeed("curl -sf http://127.0.0.1:9464/metrics")
        unit = machine.succeed("systemctl cat supabase-manager-backup.service")
        assert "LoadCredential=backup-password:/etc/supabase-backup-password" in unit, unit
  '';
}
