# The pure part of the NixOS module: option defaults, validation, the config file's contents, the
# environment, the Caddy global options and import line, and the tmpfiles rules.
#
# It uses builtins only (no nixpkgs `lib`, no `pkgs`): module.nix takes every value it writes from
# here, and nix/tests/eval.nix checks some of these rules against the program's own without any
# of nixpkgs (see tests/test_nix.py).
let
  inherit (builtins)
    attrNames
    concatStringsSep
    filter
    fromJSON
    isString
    length
    match
    stringLength
    substring
    toString
    ;

  hasPrefix = prefix: text: substring 0 (stringLength prefix) text == prefix;
  removePrefix =
    prefix: text:
    if hasPrefix prefix text then
      substring (stringLength prefix) (stringLength text - stringLength prefix) text
    else
      text;
  # "0042" -> 42 (fromJSON refuses leading zeros).
  toInt =
    digits:
    let
      trimmed = match "0*([0-9]+)" digits;
    in
    fromJSON (if trimmed == null then digits else builtins.head trimmed);
in
rec {
  defaults = {
    dataDir = "/var/lib/supabase";
    domain = "localhost";
    scheme = "https";
    # publicPort follows the scheme: see defaultPublicPort.
    portRange = "20000-29999";
    caddyAdminAddress = "http://localhost:2019";
    caddyGroup = "caddy";
    maintenanceInterval = "hourly";
    backupSchedule = "daily";
    backupKeep = {
      daily = 7;
      weekly = 4;
      monthly = 6;
    };
    metricsListen = "127.0.0.1:9464";
  };

  # Where the module writes the program's config file; exported as SUPABASE_MANAGER_CONFIG.
  configFile = "/etc/supabase-manager/config.toml";
  etcConfigName = "supabase-manager/config.toml";

  # The unix socket the module offers as the alternative admin address; /run/caddy is created as
  # caddy's RuntimeDirectory (0750, group caddy) when an address of this form is chosen.
  unixAdminExample = "unix//run/caddy/admin.sock";

  defaultPublicPort = scheme: if scheme == "http" then 80 else 443;

  # Regular expressions shared by the option types (types.strMatching) and the checks below.
  portRangePattern = "([0-9]+)-([0-9]+)";
  adminAddressPattern = "http://[^/[:space:]]+|unix//[^[:space:]|]+";
  domainPattern = "([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)([.][a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*";
  # HOST:PORT for `metrics serve --listen`; HOST may be [IPv6].
  listenPattern = "([^[:space:]]*):([0-9]+)";

  # "127.0.0.1:9464" -> 9464
  listenPort = address: toInt (builtins.elemAt (match listenPattern address) 1);
  listenHost = address: builtins.elemAt (match listenPattern address) 0;

  # Host names and addresses that stay on this machine.
  isLoopbackHost =
    host:
    builtins.elem host [
      "localhost"
      "[::1]"
      "::1"
    ]
    || hasPrefix "127." host;

  # Caddy's admin API is on this machine: a unix socket, or http:// to a loopback host.
  isLocalAdmin =
    address:
    isUnixAdmin address
    || (
      let
        parts = match "http://([[][0-9a-fA-F:.]*[]]|[^:/]+)(:[0-9]+)?/?" address;
      in
      parts != null && isLoopbackHost (builtins.head parts)
    );

  # A restic repository on the local file system (a path or local:PATH), not a remote store.
  localRepository = repository: hasPrefix "/" repository || hasPrefix "local:/" repository;
  repositoryPath = repository: removePrefix "local:" repository;

  # "20000-29999" -> { low = 20000; high = 29999; } or null when it does not have that shape.
  parsePortRange =
    text:
    let
      parts = if isString text then match portRangePattern text else null;
    in
    if parts == null then
      null
    else
      {
        low = toInt (builtins.elemAt parts 0);
        high = toInt (builtins.elemAt parts 1);
      };

  # The same rule as controller/config.py: both ends within 1024-65535, low first.
  validPortRange =
    text:
    let
      range = parsePortRange text;
    in
    range != null && 1024 <= range.low && range.low <= range.high && range.high <= 65535;

  validAdminAddress = text: isString text && match adminAddressPattern text != null;

  isUnixAdmin = address: hasPrefix "unix//" address;

  # "unix//run/caddy/admin.sock" -> "/run/caddy/admin.sock"
  adminSocketPath = address: removePrefix "unix/" address;

  # Contents of the config file, as an attribute set for pkgs.formats.toml. Only the keys the program
  # reads (see controller/config.py and the interface notes); the data root travels through
  # SUPABASE_MANAGER_ROOT instead. [backup] and [metrics] are written when their units are on.
  # `cfg` has the shape of config.services.supabase-manager.
  settings =
    cfg:
    {
      inherit (cfg) domain scheme;
      public_port = cfg.publicPort;
      caddy.admin = cfg.caddy.adminAddress;
      ports.range = cfg.portRange;
    }
    // (
      if cfg.backup.enable then
        {
          backup = {
            inherit (cfg.backup) repository;
            keep = cfg.backup.keep;
          }
          // (if cfg.backup.passwordFile == null then { } else { password_file = cfg.backup.passwordFile; })
          // (
            if cfg.backup.environmentFile == null then
              { }
            else
              { environment_file = cfg.backup.environmentFile; }
          );
        }
      else
        { }
    )
    // (if cfg.metrics.enable then { metrics.listen = cfg.metrics.listenAddress; } else { });

  # The config keys the module writes, as paths: `settings` must not set them too.
  managedKeys =
    cfg:
    [
      [ "domain" ]
      [ "scheme" ]
      [ "public_port" ]
      [
        "caddy"
        "admin"
      ]
      [
        "ports"
        "range"
      ]
    ]
    ++ (
      if cfg.backup.enable then
        map (key: [
          "backup"
          key
        ]) (attrNames (settings cfg).backup)
      else
        [ ]
    )
    ++ (
      if cfg.metrics.enable then
        [
          [
            "metrics"
            "listen"
          ]
        ]
      else
        [ ]
    );

  hasPath =
    path: attrs:
    path == [ ]
    || (
      builtins.isAttrs attrs
      && attrs ? ${builtins.head path}
      && hasPath (builtins.tail path) attrs.${builtins.head path}
    );

  # Managed keys that `settings` sets as well, as "a.b" strings.
  overriddenKeys =
    cfg: map (concatStringsSep ".") (filter (path: hasPath path cfg.settings) (managedKeys cfg));

  # Where `docker login` keeps registry credentials for the program's pulls: inside dataDir,
  # because the units see an empty /root (ProtectHome).
  dockerConfigDir = cfg: "${toString cfg.dataDir}/.docker";

  # Defaults the installed command sets before it runs the program (unless already set), so that
  # `sudo supabase-manager`, which drops the login environment, and the units use the same data
  # folder, config file and registry logins.
  environment = cfg: {
    SUPABASE_MANAGER_ROOT = toString cfg.dataDir;
    SUPABASE_MANAGER_CONFIG = configFile;
    DOCKER_CONFIG = dockerConfigDir cfg;
  };

  snippetDir = cfg: "${toString cfg.dataDir}/caddy";

  # Lines for services.caddy.extraConfig: everything after the global options block.
  # A glob that matches nothing only makes Caddy warn, so a host with no instance yet is fine.
  caddyImportLine = cfg: "import ${snippetDir cfg}/*.conf";
  caddyExtraConfig = cfg: caddyImportLine cfg + "\n";

  # Caddy `admin` global option for the chosen address. A unix socket gets mode 0660: its owner and
  # group (caddy) can talk to it; root can anyway.
  adminDirective =
    address:
    if isUnixAdmin address then
      "admin ${address}|0660"
    else
      "admin ${removePrefix "http://" address}";

  # Lines for services.caddy.globalConfig (inside the global options block):
  # - the public listener gets the server name `supabase`, which the program addresses as
  #   /config/apps/http/servers/supabase (the key must be the real listener, hence the port);
  # - per-host request metrics for `top` and `list`;
  # - a bounded grace period, so that a reload (every route change is one) never waits forever on
  #   open connections;
  # - the admin endpoint, written out even for the default, so that `caddy reload` (what
  #   services.caddy.enableReload runs) and the program agree on it.
  # - caddy.serverOptions lines (trusted_proxies, timeouts, protocols, ...) go inside that block:
  #   Caddy applies a listener's own `servers :PORT` block instead of a bare `servers` block.
  caddyGlobalLines =
    cfg:
    [
      "servers :${toString cfg.publicPort} {"
      "  name supabase"
    ]
    ++ map (line: "  " + line) (
      filter (line: isString line && match "[[:space:]]*" line == null) (
        builtins.split "\n" cfg.caddy.serverOptions
      )
    )
    ++ [
      "}"
      "metrics {"
      "  per_host"
      "}"
      "grace_period 10s"
      (adminDirective cfg.caddy.adminAddress)
    ];
  caddyGlobalConfig = cfg: concatStringsSep "\n" (caddyGlobalLines cfg) + "\n";

  # systemd.tmpfiles.settings."10-supabase-manager": `d` creates a folder and, on every boot and
  # switch, puts its mode and owner back.
  # - dataDir 0711: others may only traverse it (Caddy reaches caddy/ through it);
  # - instances/ and templates/ 0700: instance folders hold secrets (.env, keys);
  # - caddy/ 2750 root:caddy: Caddy reads the snippets (0640, they hold bcrypt hashes), nobody else
  #   does; the setgid bit gives every snippet the program writes the group caddy;
  # - .docker/ 0700: the registry logins (DOCKER_CONFIG).
  tmpfilesRules =
    cfg:
    let
      root = toString cfg.dataDir;
      dir = mode: group: {
        d = {
          inherit mode group;
          user = "root";
        };
      };
    in
    {
      "${root}" = dir "0711" "root";
      "${root}/instances" = dir "0700" "root";
      "${root}/templates" = dir "0700" "root";
      "${snippetDir cfg}" = dir "2750" cfg.caddy.group;
      "${dockerConfigDir cfg}" = dir "0700" "root";
    };

  # Messages for config.assertions (the module turns them into { assertion; message; }).
  problems =
    cfg:
    filter (message: message != null) [
      (
        if validPortRange cfg.portRange then
          null
        else
          "services.supabase-manager.portRange: ${toString cfg.portRange} is not LOW-HIGH within 1024-65535, low first"
      )
      (
        if validAdminAddress cfg.caddy.adminAddress then
          null
        else
          "services.supabase-manager.caddy.adminAddress: ${toString cfg.caddy.adminAddress} is neither http://HOST:PORT nor unix//PATH"
      )
      (
        if match domainPattern cfg.domain != null then
          null
        else
          "services.supabase-manager.domain: ${cfg.domain} is not a lowercase DNS name"
      )
    ];

  # True when nothing in `problems` applies.
  valid = cfg: length (problems cfg) == 0;
}
