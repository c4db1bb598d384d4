# The NixOS options that nix/module.nix sets or reads, declared with the types nixpkgs gives them,
# so that nix/tests/module-eval.nix can run nix/module.nix through the real module system
# (`lib.evalModules` from nixpkgs' lib) without the rest of nixpkgs.
#
# Written to match nixpkgs (nixos/modules/misc/assertions.nix, system/boot/systemd.nix with
# nixos/lib/systemd-unit-options.nix, system/boot/systemd/tmpfiles.nix, config/users-groups.nix,
# services/networking/firewall.nix, virtualisation/docker.nix, system/etc/etc.nix,
# services/web-servers/caddy): same names, types and defaults, so that a wrong type, a conflicting
# definition or a misspelt option fails here as it would in a real system. Only the parts of
# their implementations that the checks look at are reproduced: the caddy module's additions to
# its global options and the groups it creates.
{
  config,
  lib,
  options,
  pkgs,
  ...
}:

let
  inherit (lib) mkOption types;

  # nixos/lib/systemd-unit-options.nix: a repeatable option is a list (definitions concatenate,
  # a single value joining them), anything else must be defined once or identically. Like
  # nixpkgs', it takes any value (a derivation is written as its store path).
  unitOption = types.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if builtins.any (def: builtins.isList def.value) defs' then
        lib.concatMap (def: lib.toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };

  unitNameType = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  # nixos/lib/systemd-unit-options.nix checkService: Type= and Restart= take known values only.
  checkService =
    attrs:
    let
      known = name: values: !(attrs ? ${name}) || builtins.elem attrs.${name} values;
    in
    known "Type" [
      "exec"
      "simple"
      "forking"
      "oneshot"
      "dbus"
      "notify"
      "notify-reload"
      "idle"
    ]
    && known "Restart" [
      "no"
      "on-success"
      "on-failure"
      "on-abnormal"
      "on-abort"
      "always"
    ];

  units = list: mkOption {
    type = types.listOf unitNameType;
    default = [ ];
    description = "Unit names (${list}).";
  };

  commonUnitOptions = {
    description = mkOption {
      type = types.singleLineStr;
      default = "";
      description = "Description of this unit.";
    };
    wantedBy = units "wantedBy";
    requiredBy = units "requiredBy";
    requires = units "requires";
    wants = units "wants";
    after = units "after";
    before = units "before";
    bindsTo = units "bindsTo";
    partOf = units "partOf";
    conflicts = units "conflicts";
    requisite = units "requisite";
    onFailure = units "onFailure";
    unitConfig = mkOption {
      type = types.attrsOf unitOption;
      default = { };
      description = "[Unit] section.";
    };
    startLimitBurst = mkOption {
      type = types.int;
      description = "StartLimitBurst=.";
    };
    startLimitIntervalSec = mkOption {
      type = types.int;
      description = "StartLimitIntervalSec=.";
    };
    restartTriggers = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
      description = "Restart the unit on a switch when any of these change.";
    };
    reloadTriggers = mkOption {
      type = types.listOf unitOption;
      default = [ ];
      description = "Reload the unit on a switch when any of these change.";
    };
  };

  serviceOptions = {
    options = commonUnitOptions // {
      environment = mkOption {
        type =
          with types;
          attrsOf (
            nullOr (oneOf [
              str
              path
              package
            ])
          );
        default = { };
        description = "Environment variables of the service's processes.";
      };
      path = mkOption {
        type =
          with types;
          listOf (oneOf [
            package
            str
          ]);
        default = [ ];
        description = "Packages whose bin/ and sbin/ go on the service's PATH.";
      };
      serviceConfig = mkOption {
        type = types.addCheck (types.attrsOf unitOption) checkService;
        default = { };
        description = "[Service] section.";
      };
      script = mkOption {
        type = types.lines;
        default = "";
        description = "Shell commands run as the main process.";
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
        description = "Restart the service on a switch when its definition changed.";
      };
      reloadIfChanged = mkOption {
        type = types.bool;
        default = false;
        description = "Reload instead of restart.";
      };
      stopIfChanged = mkOption {
        type = types.bool;
        default = true;
        description = "Stop in the old configuration, start in the new.";
      };
      startAt = mkOption {
        type = with types; either str (listOf str);
        default = [ ];
        description = "OnCalendar= of an implied timer.";
      };
    };
  };

  timerOptions = {
    options = commonUnitOptions // {
      timerConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
        description = "[Timer] section.";
      };
    };
  };

  # nixos/modules/system/boot/systemd/tmpfiles.nix: settings.<file>.<path>.<type> = { ... }.
  tmpfilesEntry = types.submodule (
    { name, ... }:
    {
      options = {
        type = mkOption {
          type = types.str;
          default = name;
          description = "Type of the rule (d, z, L, ...).";
        };
        mode = mkOption {
          type = types.str;
          default = "-";
          description = "File mode.";
        };
        user = mkOption {
          type = types.str;
          default = "-";
          description = "Owner.";
        };
        group = mkOption {
          type = types.str;
          default = "-";
          description = "Group.";
        };
        age = mkOption {
          type = types.str;
          default = "-";
          description = "Age (cleanup).";
        };
        argument = mkOption {
          type = types.str;
          default = "";
          description = "Argument.";
        };
      };
    }
  );

  etcEntry = types.submodule (
    { name, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
          description = "Whether the file is created.";
        };
        target = mkOption {
          type = types.str;
          default = name;
          description = "Path below /etc.";
        };
        text = mkOption {
          type = types.nullOr types.lines;
          default = null;
          description = "Contents.";
        };
        source = mkOption {
          type = types.path;
          description = "Source file.";
        };
        mode = mkOption {
          type = types.str;
          default = "symlink";
          description = "Mode, or symlink.";
        };
      };
    }
  );

  ports = mkOption {
    type = types.listOf types.port;
    default = [ ];
    description = "Ports opened in the firewall.";
  };

  caddyCfg = config.services.caddy;

  vhostOptions =
    { name, ... }:
    {
      options = {
        hostName = mkOption {
          type = types.str;
          default = name;
          description = "Canonical host name.";
        };
        serverAliases = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "More host names.";
        };
        listenAddresses = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Addresses to bind.";
        };
        useACMEHost = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Certificate of security.acme to use.";
        };
        logFormat = mkOption {
          type = types.nullOr types.lines;
          default = null;
          description = "Access log of the host.";
        };
        extraConfig = mkOption {
          type = types.lines;
          default = "";
          description = "Lines inside the site block.";
        };
      };
    };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      internal = true;
      default = [ ];
      description = "{ assertion; message; } checked before a system is built.";
    };
    warnings = mkOption {
      type = types.listOf types.str;
      internal = true;
      default = [ ];
      description = "Printed while a system is built.";
    };

    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
      description = "Packages in the system profile.";
    };
    environment.variables = mkOption {
      type = with types; attrsOf (oneOf [ (listOf (oneOf [ int str path ])) int str path ]);
      default = { };
      description = "Variables of every login shell.";
    };
    environment.etc = mkOption {
      type = types.attrsOf etcEntry;
      default = { };
      description = "Files in /etc.";
    };

    networking.firewall = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "The firewall.";
      };
      allowedTCPPorts = ports;
      allowedUDPPorts = ports;
    };

    virtualisation.docker = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = "The Docker daemon.";
      };
      package = mkOption {
        type = types.package;
        default = pkgs.docker;
        description = "Docker.";
      };
    };

    users.users = mkOption {
      type = types.attrsOf (types.attrsOf types.unspecified);
      default = { };
      description = "User accounts.";
    };
    users.groups = mkOption {
      type = types.attrsOf (types.attrsOf types.unspecified);
      default = { };
      description = "Groups.";
    };

    systemd.package = mkOption {
      type = types.package;
      default = pkgs.systemd;
      description = "systemd.";
    };
    systemd.services = mkOption {
      type = types.attrsOf (types.submodule serviceOptions);
      default = { };
      description = "systemd services.";
    };
    systemd.timers = mkOption {
      type = types.attrsOf (types.submodule timerOptions);
      default = { };
      description = "systemd timers.";
    };
    systemd.tmpfiles.settings = mkOption {
      type = types.attrsOf (types.attrsOf (types.attrsOf tmpfilesEntry));
      default = { };
      description = "tmpfiles.d rules by file, path and type.";
    };

    # nixos/modules/services/web-servers/caddy/default.nix
    services.caddy = {
      enable = lib.mkEnableOption "Caddy web server";
      user = mkOption {
        type = types.str;
        default = "caddy";
        description = "User of Caddy.";
      };
      group = mkOption {
        type = types.str;
        default = "caddy";
        description = "Group of Caddy.";
      };
      package = mkOption {
        type = types.package;
        default = pkgs.caddy;
        description = "Caddy.";
      };
      logFormat = mkOption {
        type = types.lines;
        default = ''
          level ERROR
        '';
        description = "The default logger.";
      };
      resume = mkOption {
        type = types.bool;
        default = false;
        description = "Use the saved (autosave.json) config instead of the Caddyfile.";
      };
      globalConfig = mkOption {
        type = types.lines;
        default = "";
        description = "Lines of the global options block.";
      };
      extraConfig = mkOption {
        type = types.lines;
        default = "";
        description = "Lines after the global options block.";
      };
      virtualHosts = mkOption {
        type = types.attrsOf (types.submodule vhostOptions);
        default = { };
        description = "Sites.";
      };
      acmeCA = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "acme_ca global option.";
      };
      email = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "email global option.";
      };
      httpPort = mkOption {
        type = types.nullOr types.port;
        default = 80;
        description = "Default HTTP port.";
      };
      httpsPort = mkOption {
        type = types.nullOr types.port;
        default = 443;
        description = "Default HTTPS port (also HTTP/3).";
      };
      enableReload = mkOption {
        type = types.bool;
        default = true;
        description = "Reload instead of restart on a config change.";
      };
      settings = mkOption {
        type = types.attrsOf types.anything;
        default = { };
        description = "JSON config, replacing the Caddyfile.";
      };
      environmentFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "EnvironmentFile= of caddy.service.";
      };
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open httpPort and httpsPort.";
      };
    };
  };

  # What the caddy module's implementation adds, as far as the checks look at it.
  config = lib.mkIf caddyCfg.enable {
    services.caddy.globalConfig = ''
      ${lib.optionalString (caddyCfg.email != null) "email ${caddyCfg.email}"}
      ${lib.optionalString (caddyCfg.acmeCA != null) "acme_ca ${caddyCfg.acmeCA}"}
      ${lib.optionalString (
        !builtins.elem caddyCfg.httpPort [
          null
          options.services.caddy.httpPort.default
        ]
      ) "http_port ${toString caddyCfg.httpPort}"}
      ${lib.optionalString (
        !builtins.elem caddyCfg.httpsPort [
          null
          options.services.caddy.httpsPort.default
        ]
      ) "https_port ${toString caddyCfg.httpsPort}"}
      log {
        ${caddyCfg.logFormat}
      }
    '';
    systemd.services.caddy = {
      wantedBy = [ "multi-user.target" ];
      serviceConfig = {
        User = caddyCfg.user;
        Group = caddyCfg.group;
        Restart = "on-failure";
        EnvironmentFile = lib.optional (caddyCfg.environmentFile != null) caddyCfg.environmentFile;
      };
    };
    users.users = lib.optionalAttrs (caddyCfg.user == "caddy") {
      caddy.group = caddyCfg.group;
    };
    users.groups = lib.optionalAttrs (caddyCfg.group == "caddy") { caddy = { }; };
    networking.firewall = lib.mkIf caddyCfg.openFirewall {
      allowedTCPPorts = builtins.filter (port: port != null) [
        caddyCfg.httpPort
        caddyCfg.httpsPort
      ];
      allowedUDPPorts = lib.optional (caddyCfg.httpsPort != null) caddyCfg.httpsPort;
    };
  };
}
