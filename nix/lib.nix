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

  # --- hosts: Docker engines on other machines, reached over SSH ------------------------------

  # Where the module writes the known_hosts file made of the declared host keys.
  knownHostsFile = "/etc/supabase-manager/known_hosts";
  etcKnownHostsName = "supabase-manager/known_hosts";
  # The name of the SSH key's systemd credential: the units find it at %d/<name>.
  sshKeyCredential = "ssh-key";

  # Host names, as `host add` takes them (controller/ops/hosts.py); `local` is this machine's engine.
  hostNamePattern = "[a-z]([a-z0-9-]{0,30}[a-z0-9])?";
  reservedHostNames = [ "local" ];
  # ssh://USER@ADDRESS[:PORT]; ADDRESS is a DNS name, an IPv4 address or [IPv6].
  sshUrlPattern = "ssh://([A-Za-z0-9_][A-Za-z0-9_.-]{0,31})@([[][0-9a-fA-F:.]+[]]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:([0-9]{1,5}))?/?";
  ipv4Pattern = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])([.](25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}";
  ipv6Pattern = "[0-9a-fA-F]*:[0-9a-fA-F:.]*";
  # An IP address instance ports can be published on (docker's -p ADDRESS:PORT:PORT).
  bindPattern = "${ipv4Pattern}|${ipv6Pattern}";
  # "TYPE BASE64 [COMMENT]", as in /etc/ssh/ssh_host_ed25519_key.pub on the worker.
  hostKeyPattern = "((ssh|sk-ssh|ecdsa|sk-ecdsa)-[a-z0-9@.-]+)[[:space:]]+([A-Za-z0-9+/]+=*)([[:space:]].*)?";

  isIpAddress = text: match ipv4Pattern text != null || match ipv6Pattern text != null;
  # Addresses that mean "every interface": instance ports must never be published there.
  isUnspecifiedAddress =
    text:
    builtins.elem text [
      "0.0.0.0"
      "::"
      "[::]"
    ]
    || match "(0*:)+0*|0+([.]0+){3}" text != null;

  # "ssh://deploy@[fd00::2]:2222" -> { user = "deploy"; address = "fd00::2"; port = 2222; }
  # (port 22 when not given), or null when the URL does not have that shape.
  parseSshUrl =
    url:
    let
      parts = if isString url then match sshUrlPattern url else null;
      address = builtins.elemAt parts 1;
      port = builtins.elemAt parts 4;
    in
    if parts == null then
      null
    else
      {
        user = builtins.elemAt parts 0;
        address = if hasPrefix "[" address then substring 1 (stringLength address - 2) address else address;
        port = if port == null then 22 else toInt port;
      };

  # One known_hosts line per declared host, as ssh looks the key up: by the address it connects
  # to, with [ADDRESS]:PORT for another port than 22. Comments of the key lines are left out.
  knownHostsLine =
    host:
    let
      url = parseSshUrl host.url;
      key = match hostKeyPattern host.hostKey;
      pattern = if url.port == 22 then url.address else "[${url.address}]:${toString url.port}";
    in
    "${pattern} ${builtins.elemAt key 0} ${builtins.elemAt key 2}";
  knownHosts =
    cfg: concatStringsSep "" (map (name: knownHostsLine cfg.hosts.${name} + "\n") (attrNames cfg.hosts));

  # The arguments after `supabase-manager host add` for a declared host.
  hostAddArguments =
    name: host:
    [
      name
      host.url
    ]
    ++ (if host.bind == null then [ ] else [ "--bind" host.bind ])
    ++ (if host.dataRoot == null then [ ] else [ "--data-root" host.dataRoot ]);

  # IP addresses the units talk to for the declared hosts (SSH to ADDRESS, HTTP to BIND), for
  # IPAddressAllow=; DNS names cannot go there (see dnsNamedHosts).
  hostIpAddresses =
    cfg:
    let
      all = builtins.concatMap (
        name:
        let
          host = cfg.hosts.${name};
          url = parseSshUrl host.url;
        in
        (if url != null && isIpAddress url.address then [ url.address ] else [ ])
        ++ (if host.bind != null && isIpAddress host.bind then [ host.bind ] else [ ])
      ) (attrNames cfg.hosts);
    in
    builtins.foldl' (
      seen: address: if builtins.elem address seen then seen else seen ++ [ address ]
    ) [ ] all;
  dnsNamedHosts =
    cfg:
    filter (
      name:
      let
        url = parseSshUrl cfg.hosts.${name}.url;
      in
      url != null && !isIpAddress url.address
    ) (attrNames cfg.hosts);

  # The [hosts] table of the config file: the key file for manual commands (the units get the
  # credential through the environment instead) and the declared host keys.
  hostsSettings =
    cfg:
    (if cfg.sshKeyFile == null then { } else { identity_file = cfg.sshKeyFile; })
    // (if cfg.hosts == { } then { } else { known_hosts = knownHostsFile; });

  # Messages for the declared hosts (see `problems`).
  hostProblems =
    cfg:
    builtins.concatMap (
      name:
      let
        host = cfg.hosts.${name};
        url = parseSshUrl host.url;
        option = "services.supabase-manager.hosts.${name}";
      in
      filter (message: message != null) [
        (
          if match hostNamePattern name != null && !builtins.elem name reservedHostNames then
            null
          else
            "${option}: the host name ${name} is not lowercase letters, digits and '-' starting with a letter (at most 32 characters), or is reserved (local is this machine's engine)"
        )
        (
          if url == null then
            "${option}.url: ${toString host.url} is not ssh://USER@ADDRESS[:PORT]"
          else if url.port < 1 || url.port > 65535 then
            "${option}.url: port ${toString url.port} is not within 1-65535"
          else
            null
        )
        (
          if host.bind == null && url != null && !isIpAddress url.address then
            "${option}.bind: ${url.address} is a DNS name; instance ports bind to an IP address, so give the worker's private one"
          else
            null
        )
        (
          if host.dataRoot != null && match "(.*/)?[.][.](/.*)?" host.dataRoot != null then
            "${option}.dataRoot: ${host.dataRoot} has a .. component"
          else
            null
        )
        (
          if host.bind != null && isUnspecifiedAddress host.bind then
            "${option}.bind: ${host.bind} publishes instance ports on every interface of the worker; give its private address (a WireGuard or LAN one)"
          else
            null
        )
      ]
    ) (attrNames cfg.hosts);

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
    // (if cfg.metrics.enable then { metrics.listen = cfg.metrics.listenAddress; } else { })
    // (if hostsSettings cfg == { } then { } else { hosts = hostsSettings cfg; });

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
    )
    ++ map (key: [
      "hosts"
      key
    ]) (attrNames (hostsSettings cfg));

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
    ]
    ++ hostProblems cfg;

  # True when nothing in `problems` applies.
  valid = cfg: length (problems cfg) == 0;
}
