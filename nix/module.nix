# NixOS module: services.supabase-manager.
#
# Every value this module writes (config file contents, Caddy lines, folder modes, environment)
# comes from ./lib.nix. tests/test_nix.py evaluates this file with nixpkgs' real module system
# (nix/tests/module-eval.nix) in many configurations and has Caddy adapt every Caddyfile it
# produces. The VM test is nix/tests/vm.nix.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.supabase-manager;
  caddyCfg = config.services.caddy;
  sm = import ./lib.nix;

  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    optional
    optionalAttrs
    optionals
    types
    ;

  # A path on this machine, given as a string: a Nix path literal would be copied into the
  # world-readable store. Nothing that systemd unit files and tmpfiles.d would split or expand
  # (spaces, quotes, backslashes, %).
  hostPath =
    types.addCheck (types.pathWith {
      inStore = false;
      absolute = true;
    }) (path: builtins.match "[^[:space:]\"'\\%]+" path != null)
    // {
      description = "absolute path outside the Nix store, without spaces, quotes, backslashes or %";
    };

  settingsFormat = pkgs.formats.toml { };

  # A declared Docker host (`supabase-manager host add`).
  hostOptions = {
    options = {
      url = mkOption {
        type = types.strMatching sm.sshUrlPattern // {
          description = "ssh://USER@ADDRESS[:PORT] URL (ADDRESS a DNS name, an IPv4 address or [IPv6])";
        };
        example = "ssh://deploy@10.100.0.2";
        description = ''
          Where the worker's Docker engine is reached: `ssh://USER@ADDRESS[:PORT]`. USER must
          be allowed to use Docker there (root or the docker group), by key authentication.
        '';
      };

      bind = mkOption {
        type = types.nullOr (
          types.strMatching sm.bindPattern
          // {
            description = "IP address";
          }
        );
        default = null;
        example = "10.100.0.2";
        description = ''
          The worker's address that instance ports are published on and Caddy dials: a
          private one (WireGuard, a LAN), never `0.0.0.0`. `null`: the URL's address, which
          must then be an IP address.
        '';
      };

      dataRoot = mkOption {
        type = types.nullOr hostPath;
        default = null;
        example = "/srv/supabase";
        description = ''
          Folder on the worker under which the instance folders are copied
          ({file}`<dataRoot>/instances/NAME`). `null`: the same absolute path as on this
          machine ({file}`<dataDir>/instances/NAME`).
        '';
      };

      hostKey = mkOption {
        type = types.strMatching sm.hostKeyPattern // {
          description = "SSH public host key (TYPE BASE64 [COMMENT])";
        };
        example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBlYWNlIGFuZCBxdWlldCBhbmQgc3NoIGtleXM= root@worker1";
        description = ''
          The worker's public host key, the contents of its
          {file}`/etc/ssh/ssh_host_ed25519_key.pub`. The module writes it to
          {file}`${sm.knownHostsFile}`, which the program checks the worker against: the
          key is declared here, never trusted on first use.
        '';
      };
    };
  };

  # The options' keys, then anything else set through `settings` (an assertion keeps `settings`
  # off the keys the options own).
  configFile = settingsFormat.generate "supabase-manager.toml" (
    lib.recursiveUpdate (sm.settings cfg) cfg.settings
  );

  root = toString cfg.dataDir;

  # The command on everyone's PATH and in the units: the program with the module's data folder,
  # config file and registry logins as defaults. `sudo` and systemd start it with an environment
  # of their own, so these cannot come from a login shell's variables. A variable already set
  # (to something else than empty) wins, as does --root/--config.
  command = pkgs.writeShellScriptBin "supabase-manager" ''
    ${lib.concatStrings (
      lib.mapAttrsToList (name: value: ''
        if [ -z "''${${name}-}" ]; then export ${name}=${lib.escapeShellArg value}; fi
      '') (sm.environment cfg)
    )}
    exec ${lib.getExe cfg.package} "$@"
  '';
  exe = lib.getExe command;

  # A reload of Caddy reloads supabase-manager-sync (ReloadPropagatedFrom), which runs this. systemd
  # never restarts a unit whose reload failed, so the retries with backoff happen here; the
  # maintenance timer's `caddy sync` is the backstop when Caddy stays unreachable longer.
  syncAfterReload = pkgs.writeShellScript "supabase-manager-sync-after-reload" ''
    for delay in 0 2 5 10 20 30; do
      ${pkgs.coreutils}/bin/sleep "$delay"
      if ${exe} caddy sync; then
        exit 0
      fi
    done
    exit 1
  '';

  caddyPort = if cfg.scheme == "http" then caddyCfg.httpPort or 80 else caddyCfg.httpsPort or 443;
  defaultPublicPort =
    if cfg.caddy.enable && caddyPort != null then caddyPort else sm.defaultPublicPort cfg.scheme;
  # Where ACME HTTP challenges and redirects to HTTPS arrive.
  httpPort =
    if cfg.caddy.enable && caddyCfg.httpPort or 80 != null then caddyCfg.httpPort or 80 else 80;

  adminSocket = sm.adminSocketPath cfg.caddy.adminAddress;
  adminSocketDir = dirOf adminSocket;
  # A socket folder below /run becomes Caddy's RuntimeDirectory; elsewhere tmpfiles creates it.
  adminSocketInRun = lib.hasPrefix "/run/" adminSocketDir;
  sharedFolders = [
    "/"
    "/run"
    "/var/run"
    "/tmp"
    "/var"
    "/var/lib"
    "/var/tmp"
    "/etc"
    "/srv"
    "/home"
    "/root"
    "/nix"
  ];

  repositoryIsLocal = sm.localRepository cfg.backup.repository;
  repositoryPath = sm.repositoryPath cfg.backup.repository;

  metricsPort = sm.listenPort cfg.metrics.listenAddress;
  metricsOnLoopback = sm.isLoopbackHost (sm.listenHost cfg.metrics.listenAddress);

  # Lines of every piece of the global options block (the module's and the user's).
  globalLines = lib.splitString "\n" caddyCfg.globalConfig;
  publicServerBlocks = builtins.filter (
    line: builtins.match "[[:space:]]*servers[[:space:]]+(tcp/)?:?${toString cfg.publicPort}[[:space:]]*[{].*" line != null
  ) globalLines;
  bareServerBlocks = builtins.filter (
    line: builtins.match "[[:space:]]*servers[[:space:]]*[{].*" line != null
  ) globalLines;

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
  # `capabilities` is what this unit's root keeps ([ ] for none); `ipAllow` the IP addresses it may
  # talk to, or null for any.
  hardening =
    {
      capabilities,
      ipAllow ? ipAddressAllow,
    }:
    {
      User = "root";
      # Nothing for others; the group bits stay possible, as snippets must be 0640 for Caddy.
      UMask = "0027";
      ProtectSystem = "strict";
      # `-`: a dataDir that does not exist yet (tmpfiles creates it) must not fail the namespace.
      ReadWritePaths = [ "-${root}" ];
      # An empty /root and /home: the docker CLI reads its config from DOCKER_CONFIG instead.
      ProtectHome = "tmpfs";
      PrivateTmp = true;
      PrivateDevices = true;
      PrivateMounts = true;
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
      # The setgid bit of the snippet folder is set by tmpfiles, never by the program.
      RestrictSUIDSGID = true;
      # systemd skips this for root; it takes effect if the units ever run as another user.
      RemoveIPC = true;
      RestrictAddressFamilies = [
        "AF_UNIX"
        "AF_INET"
        "AF_INET6"
      ];
      SystemCallArchitectures = "native";
      SystemCallFilter = [ "@system-service" ];
      # A refused system call fails with EPERM rather than killing the program mid-write.
      SystemCallErrorNumber = "EPERM";
      # The program never changes a file's owner: CAP_CHOWN is never needed. An empty string
      # (not an empty list, which systemd would not see) leaves none.
      CapabilityBoundingSet = if capabilities == [ ] then "" else capabilities;
    }
    // optionalAttrs (ipAllow != null) {
      IPAddressDeny = "any";
      IPAddressAllow = ipAllow;
    };

  # Enough for root to manage files owned by container users and by group caddy.
  fileCapabilities = [
    "CAP_DAC_OVERRIDE"
    "CAP_DAC_READ_SEARCH"
    "CAP_FOWNER"
  ];

  # Restart with backoff (systemd 254 and later): 5s, growing to `max` over 5 steps.
  backoff = max: {
    RestartSec = "5s";
    RestartSteps = 5;
    RestartMaxDelaySec = max;
  };

  # The SSH key reaches every unit as a systemd credential (%d: the unit's credentials folder),
  # named through the environment; the config file names the file itself for manual commands.
  environment =
    sm.environment cfg
    // optionalAttrs (cfg.sshKeyFile != null) {
      SUPABASE_MANAGER_SSH_IDENTITY_FILE = "%d/${sm.sshKeyCredential}";
    };
  # LoadCredential= of a unit's [Service] section, with the SSH key added to what it has.
  withSshKey =
    serviceConfig:
    serviceConfig
    // optionalAttrs (cfg.sshKeyFile != null) {
      LoadCredential = (serviceConfig.LoadCredential or [ ]) ++ [
        "${sm.sshKeyCredential}:${cfg.sshKeyFile}"
      ];
    };
  # Every unit may reach an instance on another host: `ssh` (python-on-whales' DOCKER_HOST=ssh://
  # and the Engine API over `docker system dial-stdio` run it), and the hosts' IP addresses.
  sshPath = [ pkgs.openssh ];
  ipAddressAllow =
    if cfg.ipAddressAllow == null then
      null
    else
      cfg.ipAddressAllow
      ++ builtins.filter (address: !builtins.elem address cfg.ipAddressAllow) (sm.hostIpAddresses cfg);

  # `host add` for each declared host, at boot and whenever the declared hosts change (`host add`
  # of a host recorded just as declared is a no-op). Every host is tried even after one
  # fails: exit 1 (retried with backoff) when a host could not be reached, 2 when one was refused
  # (a different host of that name exists; retrying would not help).
  addHosts = pkgs.writeShellScript "supabase-manager-add-hosts" ''
    retry=0
    refused=0
    add() {
      ${exe} host add "$@"
      case $? in
        0) ;;
        2) refused=1 ;;
        *) retry=1 ;;
      esac
    }
    ${lib.concatMapStrings (name: ''
      add ${lib.escapeShellArgs (sm.hostAddArguments name cfg.hosts.${name})}
    '') (lib.attrNames cfg.hosts)}
    if [ "$retry" = 1 ]; then exit 1; fi
    if [ "$refused" = 1 ]; then exit 2; fi
  '';

  # What a unit that reads the backup repository needs: `backup` writes it, and `check` and the
  # exporter read the last snapshot of each instance from it. The password arrives as a systemd
  # credential (%d: the unit's credentials folder), the backend's keys through EnvironmentFile=,
  # and a remote repository needs the network.
  repositoryAccess = {
    environment = optionalAttrs cfg.backup.enable (
      {
        # Kept between runs: without it restic reads the whole index from the repository.
        RESTIC_CACHE_DIR = "/var/cache/supabase-manager/restic";
      }
      // optionalAttrs (cfg.backup.passwordFile != null) {
        SUPABASE_MANAGER_BACKUP_PASSWORD_FILE = "%d/backup-password";
      }
    );
    serviceConfig = optionalAttrs cfg.backup.enable {
      LoadCredential = optional (
        cfg.backup.passwordFile != null
      ) "backup-password:${cfg.backup.passwordFile}";
      EnvironmentFile = optional (cfg.backup.environmentFile != null) cfg.backup.environmentFile;
      CacheDirectory = "supabase-manager";
      CacheDirectoryMode = "0700";
    };
    path = optional cfg.backup.enable pkgs.restic ++ sshPath;
    ipAllow = if cfg.backup.enable && !repositoryIsLocal then null else ipAddressAllow;
  };

  # Reading the disk use of instance folders walks volumes of container users (postgres, ...).
  readCapabilities = [ "CAP_DAC_READ_SEARCH" ];

  afterCaddy = optional cfg.caddy.enable "caddy.service";
in
{
  options.services.supabase-manager = {
    enable = mkEnableOption "supabase-manager, which runs many isolated self-hosted Supabase instances published through Caddy";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = literalExpression "pkgs.callPackage ./nix/package.nix { }";
      description = ''
        The supabase-manager package to use. The module installs a `supabase-manager` command
        that runs it with the module's data folder and config file as defaults.
      '';
    };

    dataDir = mkOption {
      type = hostPath;
      default = sm.defaults.dataDir;
      example = "/srv/supabase";
      description = ''
        Data folder of supabase-manager: {file}`instances/NAME` (one per instance, mode 0700),
        {file}`caddy/NAME.conf` (Caddy snippets), {file}`templates`, {file}`state.json`,
        {file}`audit.log` and {file}`.docker` (registry logins, `DOCKER_CONFIG`). The installed
        command passes it as `SUPABASE_MANAGER_ROOT`.
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
      default = defaultPublicPort;
      defaultText = literalExpression ''
        if scheme == "http" then config.services.caddy.httpPort else config.services.caddy.httpsPort
        # 80 or 443 with caddy.enable = false
      '';
      example = 8443;
      description = ''
        Port of Caddy's public listener, used in site addresses and in the URLs the program
        prints. Caddy's server on it is named `supabase`. It follows Caddy's own default port
        for the scheme ({option}`services.caddy.httpsPort` or `httpPort`), which is where
        Caddy puts sites whose address has no port.
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
        Whether to open the public port in the firewall: TCP, and with `https` also UDP (HTTP/3)
        and TCP port 80 (ACME HTTP challenges and redirects to HTTPS).
      '';
    };

    ipAddressAllow = mkOption {
      type = types.nullOr (types.listOf types.str);
      default = if sm.isLocalAdmin cfg.caddy.adminAddress then [ "localhost" ] else null;
      defaultText = literalExpression ''[ "localhost" ] # null when caddy.adminAddress is on another host'';
      example = [
        "localhost"
        "192.0.2.10"
      ];
      description = ''
        IP addresses (systemd's `IPAddressAllow=`) the units may talk to; everything else is
        denied (`IPAddressDeny=any`). Docker is reached over its unix socket and Caddy's admin API
        on localhost, so nothing more is needed on a single host. The IP addresses of the
        declared {option}`hosts` (URL and `bind`) are added for the units; add those of hosts
        named by DNS or added by hand (`supabase-manager host add`), or set `null` to lift the
        restriction. The
        backup unit is restricted only with a local repository, the metrics unit only when it
        listens on a loopback address.
      '';
    };

    settings = mkOption {
      inherit (settingsFormat) type;
      default = { };
      example = literalExpression ''{ github_api = "https://github.example.com/api/v3"; }'';
      description = ''
        Extra keys for the config file {file}`${sm.configFile}`. The keys the options above
        produce (`domain`, `scheme`, `public_port`, `caddy.admin`, `ports.range`, the
        `backup` and `metrics` keys when those are enabled, and `hosts.identity_file` and
        `hosts.known_hosts` with {option}`sshKeyFile` and {option}`hosts`) cannot be set here. See the README
        for the keys the program reads.
      '';
    };

    hosts = mkOption {
      type = types.attrsOf (types.submodule hostOptions);
      default = { };
      example = literalExpression ''
        {
          worker1 = {
            url = "ssh://deploy@10.100.0.2";
            bind = "10.100.0.2";
            hostKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... root@worker1";
          };
        }
      '';
      description = ''
        Docker engines on other machines that instances can be placed on
        (`supabase-manager create NAME --host NAME`), reached over SSH with
        {option}`sshKeyFile` (or root's agent). The unit `supabase-manager-hosts` runs
        `supabase-manager host add NAME URL [--bind ...] [--data-root ...]` for each of them at
        boot and after each switch; re-adding a host as it is changes nothing. A host removed
        from here is not removed from the program: one that still runs instances cannot be.
        Move or delete its instances, then run `supabase-manager host remove NAME`. Changing a
        declared host's URL, `bind` or `dataRoot` likewise needs `host remove` first, or the
        unit fails with the program's message. `local` is this machine's engine.
      '';
    };

    sshKeyFile = mkOption {
      type = types.nullOr hostPath;
      default = null;
      example = "/run/secrets/supabase-manager-ssh-key";
      description = ''
        Private SSH key for the {option}`hosts` (and hosts added by hand), outside the Nix
        store, e.g. from sops-nix or agenix. Every unit gets it as a systemd credential
        (`LoadCredential=`), never a copy in the store; the config file names it as
        `[hosts] identity_file` for manual `sudo supabase-manager` commands. With `null`, ssh
        uses root's agent or default keys, which the units (with an empty {file}`/root`) do
        not see.
      '';
    };

    caddy = {
      enable =
        mkEnableOption ''
          Caddy through {option}`services.caddy` as the public front of the instances: it imports
          {file}`<dataDir>/caddy/*.conf` and gets the global options the program relies on
          (server name `supabase` on the public listener, `metrics { per_host }`,
          `grace_period 10s`, the admin address). Disable it only if you configure a Caddy
          yourself with the same lines''
        // {
          default = true;
        };

      adminAddress = mkOption {
        type = types.strMatching sm.adminAddressPattern;
        default = sm.defaults.caddyAdminAddress;
        example = sm.unixAdminExample;
        description = ''
          Caddy's admin API, through which the program publishes routes: `http://HOST:PORT`
          (Caddy's default, `http://localhost:2019`) or `unix//PATH`. A socket gets mode 0660 in
          a folder (mode 0750) of Caddy's user and group, so that members of the group (and
          root) can use it while other local users cannot: a folder below {file}`/run` is
          Caddy's `RuntimeDirectory`, one elsewhere is created by tmpfiles. A change restarts
          Caddy, as a reload would be sent to the new address.
        '';
      };

      group = mkOption {
        type = types.str;
        default = if cfg.caddy.enable then caddyCfg.group else "root";
        defaultText = literalExpression ''if caddy.enable then config.services.caddy.group else "root"'';
        description = ''
          Group that may read the snippet folder {file}`<dataDir>/caddy` (Caddy's group). With
          `caddy.enable = false`, set it to the group of the Caddy you run: the default, `root`,
          lets only root read the snippets.
        '';
      };

      serverOptions = mkOption {
        type = types.lines;
        default = "";
        example = ''
          trusted_proxies static private_ranges
          timeouts {
            read_header 10s
          }
          protocols h1 h2 h3
        '';
        description = ''
          Lines inside the global `servers :<publicPort> { name supabase ... }` block, i.e. server
          options of the public listener. Caddy applies that block, not a bare `servers { }`
          block in {option}`services.caddy.globalConfig`, to the listener, and a second
          `servers :<publicPort>` block is an error: put such options here.
        '';
      };
    };

    maintenance.interval = mkOption {
      type = types.nullOr types.str;
      default = sm.defaults.maintenanceInterval;
      example = "*:0/15";
      description = ''
        How often (systemd calendar event, see {manpage}`systemd.time(7)`) the maintenance
        unit `supabase-manager-maintenance.service` runs `supabase-manager caddy sync` (routes
        Caddy lost come back) and `supabase-manager check`. Problems are logged to the journal,
        one line each, and leave the unit failed. `null` turns the timer off.
      '';
    };

    backup = {
      enable = mkEnableOption "scheduled backups of every instance with restic (`supabase-manager backup --all`, then `backup prune`)";

      repository = mkOption {
        type = types.str;
        default = "${root}/backups";
        defaultText = literalExpression ''"''${dataDir}/backups"'';
        example = "s3:https://s3.example.com/backups/supabase";
        description = ''
          The restic repository: a path, or a remote store such as
          `s3:https://HOST/BUCKET/PREFIX`, `b2:BUCKET:PREFIX`, `sftp:USER@HOST:/PATH`. Written
          to the config file as `[backup] repository`, so that manual `backup` and `restore`
          commands use it too.
        '';
      };

      passwordFile = mkOption {
        type = types.nullOr hostPath;
        default = null;
        example = "/run/secrets/supabase-backup-password";
        description = ''
          File holding the repository password, outside the Nix store. The backup unit reads it
          as a systemd credential (`LoadCredential=`); the config file names it for manual
          commands. With `null`, the program keeps a generated password in
          {file}`<dataDir>/keys/backup.key`: export it (`supabase-manager backup key export`)
          and keep it elsewhere, or the backups die with the disk.
        '';
      };

      environmentFile = mkOption {
        type = types.nullOr hostPath;
        default = null;
        example = "/run/secrets/supabase-backup.env";
        description = ''
          `KEY=VALUE` lines for the storage backend (`AWS_ACCESS_KEY_ID`,
          `AWS_SECRET_ACCESS_KEY`, `B2_ACCOUNT_ID`, ...), outside the Nix store: the unit's
          `EnvironmentFile=`, and `[backup] environment_file` for manual commands.
        '';
      };

      schedule = mkOption {
        type = types.str;
        default = sm.defaults.backupSchedule;
        example = "*-*-* 03:30:00";
        description = ''
          When backups run (`OnCalendar=`, see {manpage}`systemd.time(7)`). A run missed while
          the machine was off happens at the next boot.
        '';
      };

      keep = lib.mapAttrs (
        kind: count:
        mkOption {
          type = types.ints.unsigned;
          default = count;
          description = "How many ${kind} snapshots `backup prune` keeps per instance.";
        }
      ) sm.defaults.backupKeep;
    };

    metrics = {
      enable = mkEnableOption "the Prometheus exporter `supabase-manager metrics serve` as a service";

      listenAddress = mkOption {
        type = types.strMatching sm.listenPattern;
        default = sm.defaults.metricsListen;
        example = "0.0.0.0:9464";
        description = ''
          `HOST:PORT` the exporter listens on (`[metrics] listen` in the config file). The
          default keeps it on this machine.
        '';
      };

      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Whether to open the exporter's port (TCP) in the firewall.";
      };
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions =
        map (message: {
          assertion = false;
          inherit message;
        }) (sm.problems cfg)
        ++ [
          {
            assertion = sm.overriddenKeys cfg == [ ];
            message = "services.supabase-manager.settings sets ${lib.concatStringsSep ", " (sm.overriddenKeys cfg)}, which the module's options own; set those options instead";
          }
          {
            # The program leaves the port out of site addresses on the scheme's usual port, and
            # Caddy puts such sites on its own default port: the two must be the same listener.
            assertion =
              !cfg.caddy.enable
              || caddyPort == null
              || cfg.publicPort != sm.defaultPublicPort cfg.scheme
              || cfg.publicPort == caddyPort;
            message = "services.supabase-manager.publicPort is ${toString cfg.publicPort} but Caddy serves ${cfg.scheme} sites without a port on ${toString caddyPort} (services.caddy.${
              if cfg.scheme == "http" then "httpPort" else "httpsPort"
            }); leave publicPort at its default";
          }
        ];

      warnings =
        optional (cfg.backup.enable && cfg.backup.passwordFile == null) "services.supabase-manager.backup.passwordFile is null: the repository password is generated into ${root}/keys/backup.key, on the same disk as the data; run `supabase-manager backup key export` and keep it elsewhere"
        ++ optional (cfg.metrics.enable && cfg.metrics.openFirewall && metricsOnLoopback) "services.supabase-manager.metrics.openFirewall opens port ${toString metricsPort}, but the exporter listens on ${cfg.metrics.listenAddress}, a loopback address"
        ++ optional (cfg.ipAddressAllow != null && sm.dnsNamedHosts cfg != [ ]) "services.supabase-manager.hosts: ${lib.concatStringsSep ", " (sm.dnsNamedHosts cfg)} named by DNS, which IPAddressAllow= cannot follow: add their IP addresses to services.supabase-manager.ipAddressAllow, or set it to null";

      virtualisation.docker.enable = true;

      environment.systemPackages = [ command ];
      environment.etc.${sm.etcConfigName}.source = configFile;

      networking.firewall.allowedTCPPorts =
        optionals cfg.openFirewall ([ cfg.publicPort ] ++ optional (cfg.scheme == "https") httpPort)
        ++ optional (cfg.metrics.enable && cfg.metrics.openFirewall) metricsPort;
      # HTTP/3 runs over UDP on the HTTPS port.
      networking.firewall.allowedUDPPorts = optional (
        cfg.openFirewall && cfg.scheme == "https"
      ) cfg.publicPort;

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
        ]
        ++ afterCaddy;
        # A switch must not start instances again behind the administrator's back.
        restartIfChanged = false;
        inherit environment;
        path = sshPath;
        serviceConfig = withSshKey (
          hardening { capabilities = fileCapabilities; }
          // {
            Type = "oneshot";
            RemainAfterExit = true;
            ExecStart = "${exe} start --all";
            # `-`: a Caddy that is down (one run outside this module, say) must not fail the boot;
            # supabase-manager-sync and the maintenance timer push the routes once it is back.
            ExecStartPost = "-${exe} caddy sync";
            # Pulling nothing (images are local), but a few dozen stacks take a while to come up.
            TimeoutStartSec = "30min";
          }
        );
      };

      # Periodic maintenance: routes Caddy lost come back, then the health check. `check` prints
      # one line per problem (kept in the journal) and exits 1, which leaves the unit failed and
      # visible in `systemctl --failed`; a failed sync shows there as Caddy's problem.
      systemd.services.supabase-manager-maintenance = {
        description = "supabase-manager maintenance (Caddy routes, health check)";
        requires = [ "docker.service" ];
        after = [ "docker.service" ] ++ afterCaddy;
        environment = environment // repositoryAccess.environment;
        inherit (repositoryAccess) path;
        serviceConfig = withSshKey (
          hardening {
            capabilities = readCapabilities;
            inherit (repositoryAccess) ipAllow;
          }
          // repositoryAccess.serviceConfig
          // {
            Type = "oneshot";
            ExecStart = [
              "-${exe} caddy sync"
              "${exe} check"
            ];
          }
        );
      };
    }

    (mkIf (cfg.hosts != { }) {
      # The declared host keys: `[hosts] known_hosts` in the config file.
      environment.etc.${sm.etcKnownHostsName}.text = sm.knownHosts cfg;

      # The declared hosts into state.json (see `hosts`); never removes one.
      systemd.services.supabase-manager-hosts = {
        description = "Add the declared supabase-manager hosts";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        inherit environment;
        path = sshPath;
        serviceConfig = withSshKey (
          hardening { capabilities = [ ]; }
          // backoff "5min"
          // {
            Type = "oneshot";
            RemainAfterExit = true;
            ExecStart = addHosts;
            # A worker that is down at boot is tried again; a refused host (exit 2) is not.
            Restart = "on-failure";
            RestartPreventExitStatus = 2;
          }
        );
      };

      # Instances on the declared hosts start once those are known.
      systemd.services.supabase-manager-start = {
        wants = [ "supabase-manager-hosts.service" ];
        after = [ "supabase-manager-hosts.service" ];
      };
    })

    (mkIf (cfg.maintenance.interval != null) {
      systemd.timers.supabase-manager-maintenance = {
        description = "Periodic supabase-manager maintenance";
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnCalendar = cfg.maintenance.interval;
          Persistent = true;
          RandomizedDelaySec = "5min";
        };
      };
    })

    (mkIf cfg.caddy.enable {
      assertions = [
        {
          assertion = !caddyCfg.resume;
          message = "services.supabase-manager: services.caddy.resume must stay false (Caddy must load the Caddyfile and its snippets; supabase-manager-sync pushes the live routes)";
        }
        {
          assertion = caddyCfg.settings == { };
          message = "services.supabase-manager: services.caddy.settings replaces the Caddyfile, so the snippet import and global options would be lost; use globalConfig/extraConfig/virtualHosts";
        }
        {
          assertion = builtins.length publicServerBlocks == 1;
          message = "services.supabase-manager: services.caddy.globalConfig has its own `servers :${toString cfg.publicPort}` block, which Caddy refuses next to the module's; put its lines in services.supabase-manager.caddy.serverOptions";
        }
      ];

      warnings = optional (bareServerBlocks != [ ]) "services.caddy.globalConfig has a `servers { ... }` block: Caddy applies the module's `servers :${toString cfg.publicPort}` block to the public listener instead, so put options meant for it in services.supabase-manager.caddy.serverOptions";

      services.caddy = {
        enable = true;
        globalConfig = sm.caddyGlobalConfig cfg;
        extraConfig = sm.caddyExtraConfig cfg;
      };

      # A reload goes to the admin address in the new Caddyfile, where nothing listens yet.
      systemd.services.caddy.restartTriggers = [ cfg.caddy.adminAddress ];

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
        path = sshPath;
        serviceConfig = withSshKey (
          hardening { capabilities = [ ]; }
          // backoff "2min"
          // {
            Type = "oneshot";
            RemainAfterExit = true;
            ExecStart = "${exe} caddy sync";
            ExecReload = syncAfterReload;
            # A failed sync at Caddy's start (Caddy busy, a lock held) is tried again, with
            # backoff, rather than left until the next reload.
            Restart = "on-failure";
          }
        );
      };
    })

    # The admin socket's folder, reachable by Caddy's group only: created with Caddy below /run,
    # by tmpfiles elsewhere. (Two mkIf, not an if: the options a module defines must not depend
    # on the configuration.)
    (mkIf (cfg.caddy.enable && sm.isUnixAdmin cfg.caddy.adminAddress && adminSocketInRun) {
      systemd.services.caddy.serviceConfig = {
        RuntimeDirectory = lib.removePrefix "/run/" adminSocketDir;
        RuntimeDirectoryMode = "0750";
        RuntimeDirectoryPreserve = "restart";
      };
    })

    (mkIf (cfg.caddy.enable && sm.isUnixAdmin cfg.caddy.adminAddress && !adminSocketInRun) {
      assertions = [
        {
          assertion =
            !builtins.elem adminSocketDir sharedFolders
            && adminSocketDir != root
            && !lib.hasPrefix "${root}/" adminSocketDir;
          message = "services.supabase-manager.caddy.adminAddress: the socket needs a folder of its own (Caddy's, mode 0750), not ${adminSocketDir}";
        }
      ];
      systemd.tmpfiles.settings."10-supabase-manager".${adminSocketDir}.d = {
        mode = "0750";
        user = caddyCfg.user;
        group = caddyCfg.group;
      };
    })

    (mkIf cfg.backup.enable {
      # One snapshot per instance, then the keep policy. A switch never starts a backup.
      systemd.services.supabase-manager-backup = {
        description = "Back up every supabase-manager instance, then prune old snapshots";
        requires = [ "docker.service" ];
        wants = [ "network-online.target" ];
        after = [
          "network-online.target"
          "docker.service"
        ];
        restartIfChanged = false;
        environment = environment // repositoryAccess.environment;
        inherit (repositoryAccess) path;
        serviceConfig = withSshKey (
          hardening {
            # Volumes hold files of container users (postgres, ...).
            capabilities = fileCapabilities;
            inherit (repositoryAccess) ipAllow;
          }
          // repositoryAccess.serviceConfig
          // {
            Type = "oneshot";
            ExecStart = [
              "${exe} backup --all"
              "${exe} backup prune"
            ];
            ReadWritePaths = [
              "-${root}"
            ]
            ++ optional (repositoryIsLocal && !lib.hasPrefix "${root}/" repositoryPath) "-${repositoryPath}";
            # Instances keep serving while the backup reads their data.
            Nice = 10;
            IOSchedulingClass = "idle";
          }
        );
      };

      systemd.timers.supabase-manager-backup = {
        description = "Scheduled supabase-manager backups";
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnCalendar = cfg.backup.schedule;
          Persistent = true;
          RandomizedDelaySec = "15min";
        };
      };
    })

    (mkIf cfg.metrics.enable {
      systemd.services.supabase-manager-metrics = {
        description = "Prometheus exporter of supabase-manager's instances";
        wantedBy = [ "multi-user.target" ];
        wants = [ "docker.service" ];
        after = [
          "network.target"
          "docker.service"
        ]
        ++ afterCaddy;
        environment = environment // repositoryAccess.environment;
        inherit (repositoryAccess) path;
        serviceConfig = withSshKey (
          hardening {
            # A port below 1024 needs binding.
            capabilities = readCapabilities ++ optional (metricsPort < 1024) "CAP_NET_BIND_SERVICE";
            # Prometheus scrapes from elsewhere unless the exporter stays on loopback.
            ipAllow = if metricsOnLoopback then repositoryAccess.ipAllow else null;
          }
          // repositoryAccess.serviceConfig
          // backoff "1min"
          // {
            Type = "exec";
            ExecStart = "${exe} metrics serve --listen ${cfg.metrics.listenAddress}";
            Restart = "always";
          }
        );
      };
    })
  ]);
}
