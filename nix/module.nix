# NixOS module: services.supabase-manager.
#
# Every value this module writes (config file contents, Caddy lines, folder modes, environment)
# comes from ./lib.nix, which CI evaluates without nixpkgs; nix/tests/eval.nix also evaluates this
# file's options and config against a small stand-in for nixpkgs' lib. The VM test is
# nix/tests/vm.nix.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.supabase-manager;
  sm = import ./lib.nix;

  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    optional
    optionals
    types
    ;

  settingsFormat = pkgs.formats.toml { };

  # The options' keys, then anything set through `settings` on top.
  configFile = settingsFormat.generate "supabase-manager.toml" (
    lib.recursiveUpdate (sm.settings cfg) cfg.settings
  );

  exe = lib.getExe cfg.package;

  environment = sm.environment cfg;

  # Unit hardening, as far as Docker access allows.
  #
  # The units run as root on purpose. The program needs the Docker socket, and access to it
  # (root or the docker group) is root-equivalent anyway: anyone who can start a container can
  # mount / into it, so a separate user in the docker group would add no real boundary. Root also
  # keeps the folders right: instance folders are 0700 and hold volumes written by container users
  # (postgres, ...), and the snippet folder belongs to group caddy.
  # What can be taken away is taken away: the program itself only writes below dataDir, talks to
  # dockerd over /run/docker.sock and to Caddy's admin API (TCP on localhost or a unix socket).
  # Containers are created by dockerd, outside these units' namespaces, so none of this limits them.
  hardening = {
    User = "root";
    # Nothing for others; the group bits stay possible, as snippets must be 0640 for Caddy.
    UMask = "0027";
    ProtectSystem = "strict";
    ReadWritePaths = [ (toString cfg.dataDir) ];
    # An empty /root and /home: the docker CLI finds no config there and needs none.
    ProtectHome = "tmpfs";
    PrivateTmp = true;
    PrivateDevices = true;
    NoNewPrivileges = true;
    ProtectClock = true;
    ProtectControlGroups = true;
    ProtectHostname = true;
    ProtectKernelLogs = true;
    ProtectKernelModules = true;
    ProtectKernelTunables = true;
    ProtectProc = "invisible";
    LockPersonality = true;
    RestrictRealtime = true;
    RestrictNamespaces = true;
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
    ];
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" ];
    # Enough for root to manage files owned by container users and by group caddy.
    CapabilityBoundingSet = [
      "CAP_CHOWN"
      "CAP_DAC_OVERRIDE"
      "CAP_DAC_READ_SEARCH"
      "CAP_FOWNER"
    ];
  };

  afterCaddy = optional cfg.caddy.enable "caddy.service";
in
{
  options.services.supabase-manager = {
    enable = mkEnableOption "supabase-manager, which runs many isolated self-hosted Supabase instances published through Caddy";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = literalExpression "pkgs.callPackage ./nix/package.nix { }";
      description = "The supabase-manager package to use.";
    };

    dataDir = mkOption {
      type = types.path;
      default = sm.defaults.dataDir;
      example = "/srv/supabase";
      description = ''
        Data folder of supabase-manager: {file}`instances/NAME` (one per instance, mode 0700),
        {file}`caddy/NAME.conf` (Caddy snippets), {file}`templates`, {file}`state.json` and
        {file}`audit.log`. Exported as `SUPABASE_MANAGER_ROOT`.
      '';
    };

    domain = mkOption {
      type = types.strMatching sm.domainPattern;
      default = sm.defaults.domain;
      example = "example.dev";
      description = ''
        Domain under which instances are published: instance NAME answers on
        `NAME.<domain>`, `NAME-studio.<domain>` and `NAME-mail.<domain>`. A wildcard DNS
        record (and, with HTTPS, a wildcard certificate) for `*.<domain>` covers all of them.
      '';
    };

    scheme = mkOption {
      type = types.enum [
        "https"
        "http"
      ];
      default = sm.defaults.scheme;
      description = ''
        Scheme of the public listener: `http` serves plain HTTP (a LAN, tests).
      '';
    };

    publicPort = mkOption {
      type = types.port;
      default = sm.defaultPublicPort cfg.scheme;
      defaultText = literalExpression ''if scheme == "http" then 80 else 443'';
      example = 8443;
      description = ''
        Port of Caddy's public listener, used in site addresses and in the URLs the program
        prints. Caddy's server on it is named `supabase`.
      '';
    };

    portRange = mkOption {
      type = types.strMatching sm.portRangePattern;
      default = sm.defaults.portRange;
      example = "30000-30999";
      description = ''
        Host ports (`LOW-HIGH`, within 1024-65535) handed to instances. They are bound on
        127.0.0.1 only; Caddy is the public way in.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Whether to open the public port (and port 80 with `https`, for ACME HTTP challenges and
        redirects) in the firewall.
      '';
    };

    settings = mkOption {
      inherit (settingsFormat) type;
      default = { };
      example = literalExpression ''{ github_api = "https://github.example.com/api/v3"; }'';
      description = ''
        Extra keys for the config file {file}`${sm.configFile}`, merged over the ones the options
        above produce (`domain`, `scheme`, `public_port`, `caddy.admin`, `ports.range`). See the
        README for the keys the program reads.
      '';
    };

    caddy = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Whether to run Caddy through {option}`services.caddy` as the public front of the
          instances: it imports {file}`<dataDir>/caddy/*.conf` and gets the global options the
          program relies on (server name `supabase` on the public listener, `metrics { per_host }`,
          `grace_period 10s`, the admin address). Disable it only if you configure a Caddy
          yourself with the same lines.
        '';
      };

      adminAddress = mkOption {
        type = types.strMatching sm.adminAddressPattern;
        default = sm.defaults.caddyAdminAddress;
        example = sm.unixAdminExample;
        description = ''
          Caddy's admin API, through which the program publishes routes: `http://HOST:PORT`
          (Caddy's default, `http://localhost:2019`) or `unix//PATH`. A socket under
          {file}`/run/caddy` is created with mode 0660 in a folder of group caddy, so that
          members of the group (and root) can use it while other local users cannot.
        '';
      };

      group = mkOption {
        type = types.str;
        default = config.services.caddy.group;
        defaultText = literalExpression "config.services.caddy.group";
        description = ''
          Group that may read the snippet folder {file}`<dataDir>/caddy` (Caddy's group).
        '';
      };
    };

    maintenance.interval = mkOption {
      type = types.str;
      default = sm.defaults.maintenanceInterval;
      example = "*:0/15";
      description = ''
        How often (systemd calendar event, see {manpage}`systemd.time(7)`) the maintenance
        unit `supabase-manager-maintenance.service` runs `supabase-manager check`. Problems are
        logged to the journal, one line each, and leave the unit failed.
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = map (message: {
        assertion = false;
        inherit message;
      }) (sm.problems cfg);

      virtualisation.docker.enable = true;

      environment.systemPackages = [ cfg.package ];
      environment.etc.${sm.etcConfigName}.source = configFile;
      environment.variables = environment;

      networking.firewall.allowedTCPPorts = optionals cfg.openFirewall (
        [ cfg.publicPort ] ++ optional (cfg.scheme == "https") 80
      );

      systemd.tmpfiles.settings."10-supabase-manager" = sm.tmpfilesRules cfg;

      # At boot: start every instance marked to start, then publish their routes.
      systemd.services.supabase-manager-start = {
        description = "Start the supabase-manager instances marked to start";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ] ++ afterCaddy;
        requires = [ "docker.service" ];
        after = [
          "network-online.target"
          "docker.service"
        ] ++ afterCaddy;
        # A switch must not start instances again behind the administrator's back.
        restartIfChanged = false;
        inherit environment;
        serviceConfig = hardening // {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecStart = "${exe} start --all";
          ExecStartPost = "${exe} caddy sync";
          # Pulling nothing (images are local), but a few dozen stacks take a while to come up.
          TimeoutStartSec = "30min";
        };
      };

      # Periodic maintenance: the health check. `check` prints one line per problem (kept in the
      # journal) and exits 1, which leaves the unit failed and visible in `systemctl --failed`.
      systemd.services.supabase-manager-maintenance = {
        description = "supabase-manager maintenance (health check)";
        requires = [ "docker.service" ];
        after = [ "docker.service" ] ++ afterCaddy;
        inherit environment;
        serviceConfig = hardening // {
          Type = "oneshot";
          ExecStart = "${exe} check";
        };
      };

      systemd.timers.supabase-manager-maintenance = {
        description = "Periodic supabase-manager maintenance";
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnCalendar = cfg.maintenance.interval;
          Persistent = true;
          RandomizedDelaySec = "5min";
        };
      };
    }

    (mkIf cfg.caddy.enable {
      services.caddy = {
        enable = true;
        globalConfig = sm.caddyGlobalConfig cfg;
        extraConfig = sm.caddyExtraConfig cfg;
      };

      # Caddy forgets every route added through its admin API whenever it reads its Caddyfile
      # again: at start, at restart, and at reload (services.caddy.enableReload makes every
      # `nixos-rebuild switch` that touches the Caddyfile a reload, and `systemctl reload caddy`
      # is one too). Routes that come from the imported snippets come back, but without their ids,
      # and the program's API-only state is gone. This unit pushes the live routes again after
      # each of these:
      # - wantedBy caddy.service: every start of Caddy (boot, restart, start after a crash) pulls
      #   it in; after caddy.service: it runs once Caddy is up (Caddy's unit is Type=notify, so
      #   "up" means the config is loaded and the admin API answers);
      # - bindsTo caddy.service: whenever Caddy stops, restarts or dies, this RemainAfterExit unit
      #   goes down with it, so the next start of Caddy runs it again (partOf would miss a crash);
      # - ReloadPropagatedFrom=caddy.service: a reload of Caddy reloads this unit, i.e. runs
      #   ExecReload, ordered after Caddy's own reload by the After= above.
      # A hook in caddy.service's own ExecReload/ExecStartPost would run as the caddy user, which
      # cannot read the instances' state; this unit runs with the program's rights.
      systemd.services.supabase-manager-sync = {
        description = "Push supabase-manager's routes into Caddy after Caddy (re)loads";
        wantedBy = [ "caddy.service" ];
        bindsTo = [ "caddy.service" ];
        after = [ "caddy.service" ];
        unitConfig.ReloadPropagatedFrom = "caddy.service";
        # A changed config file (domain, port, admin address) means other routes: sync again.
        restartTriggers = [ configFile ];
        inherit environment;
        serviceConfig = hardening // {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecStart = "${exe} caddy sync";
          ExecReload = "${exe} caddy sync";
          # A failed first sync (Caddy busy, a lock held) is tried again rather than left until
          # the next reload.
          Restart = "on-failure";
          RestartSec = "10s";
        };
      };
    })

    (mkIf (cfg.caddy.enable && sm.isUnixAdmin cfg.caddy.adminAddress) {
      # The admin socket's folder: created with Caddy, traversable by its group only.
      systemd.services.caddy.serviceConfig = {
        RuntimeDirectory = "caddy";
        RuntimeDirectoryMode = "0750";
        RuntimeDirectoryPreserve = "restart";
      };
    })

    (mkIf cfg.caddy.enable {
      assertions = [
        {
          assertion = !config.services.caddy.resume;
          message = "services.supabase-manager: services.caddy.resume must stay false (Caddy must load the Caddyfile and its snippets; supabase-manager-sync pushes the live routes)";
        }
        {
          assertion = config.services.caddy.settings == { };
          message = "services.supabase-manager: services.caddy.settings replaces the Caddyfile, so the snippet import and global options would be lost; use globalConfig/extraConfig/virtualHosts";
        }
      ];
    })
  ]);

  meta.maintainers = [ ];
}
