# The pure part of the NixOS module: option defaults, validation, the config file's contents, the
# environment, the Caddy global options and import line, and the tmpfiles rules.
#
# It uses builtins only (no nixpkgs `lib`, no `pkgs`), so CI evaluates it on a machine without
# nixpkgs: `nix-instantiate --eval --strict --json nix/tests/eval.nix` (see tests/test_nix.py).
# module.nix takes every value it writes from here.
let
  inherit (builtins)
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
  # reads (see controller/config.py); the data root travels through SUPABASE_MANAGER_ROOT instead.
  # `cfg` has the shape of config.services.supabase-manager.
  settings = cfg: {
    inherit (cfg) domain scheme;
    public_port = cfg.publicPort;
    caddy.admin = cfg.caddy.adminAddress;
    ports.range = cfg.portRange;
  };

  # Exported system-wide (environment.variables) and in every unit, so that `supabase-manager`
  # typed by an administrator and the units see the same data and the same config.
  environment = cfg: {
    SUPABASE_MANAGER_ROOT = toString cfg.dataDir;
    SUPABASE_MANAGER_CONFIG = configFile;
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
  caddyGlobalLines = cfg: [
    "servers :${toString cfg.publicPort} {"
    "  name supabase"
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
  #   does; the setgid bit gives every snippet the program writes the group caddy.
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
