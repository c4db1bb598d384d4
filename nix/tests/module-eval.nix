# Evaluates nix/module.nix with nixpkgs' real module system (lib.evalModules from nixpkgs' lib),
# next to ./nixos-options.nix (the NixOS options it sets, declared as nixpkgs does) and
# ./stub-pkgs.nix, in every configuration of ./configurations.nix. tests/test_nix.py runs it:
#
#   nix-instantiate --eval --strict --json nix/tests/module-eval.nix \
#     --arg libPath /path/to/nixpkgs/lib [--arg extra '{ readme = /tmp/readme.nix; }']
#
# (or `import ./module-eval.nix { inherit lib; }`, as the flake's checks.module do)
# prints { NAME = summary; } for the `good` configurations plus `extra` (more modules, e.g. the
# README's example, each evaluated with services.supabase-manager.enable as the module sets it).
# With --argstr bad NAME it evaluates that configuration of `bad` alone, which must fail.
{
  libPath ? null,
  lib ? import libPath,
  extra ? { },
  bad ? null,
}:
let
  pkgs = import ./stub-pkgs.nix { inherit lib; };
  configurations = import ./configurations.nix;

  inherit (lib)
    attrValues
    concatMapStringsSep
    concatStringsSep
    filterAttrs
    hasPrefix
    isDerivation
    mapAttrs
    optionalString
    ;

  evaluate =
    module:
    lib.evalModules {
      modules = [
        ./nixos-options.nix
        ../module.nix
        module
        { _module.args.pkgs = pkgs; }
      ];
    };

  # The Caddyfile nixpkgs' caddy module writes from services.caddy (before `caddy fmt`).
  caddyfile =
    cfg:
    let
      vhost = host: ''
        ${host.hostName} ${concatStringsSep " " host.serverAliases} {
          ${optionalString (host.listenAddresses != [ ]) "bind ${concatStringsSep " " host.listenAddresses}"}
          ${optionalString (host.logFormat != null) ''
            log {
              ${host.logFormat}
            }
          ''}

          ${host.extraConfig}
        }
      '';
    in
    ''
      {
        ${cfg.globalConfig}
      }
      ${cfg.extraConfig}
      ${concatMapStringsSep "\n" vhost (attrValues cfg.virtualHosts)}
    '';

  # Scripts (derivations with a text) anywhere in a value, by store path.
  scriptsIn =
    value:
    if isDerivation value then
      lib.optional (value ? text) {
        name = value.outPath;
        value = value.text;
      }
    else if builtins.isAttrs value then
      lib.concatMap scriptsIn (attrValues value)
    else if builtins.isList value then
      lib.concatMap scriptsIn value
    else
      [ ];

  unit =
    service:
    {
      inherit (service)
        description
        wantedBy
        wants
        requires
        after
        bindsTo
        environment
        path
        unitConfig
        serviceConfig
        restartIfChanged
        restartTriggers
        ;
    };

  summary =
    result:
    let
      c = result.config;
      sm = c.services.supabase-manager;
      ours = filterAttrs (name: _: hasPrefix "supabase-manager" name);
      services = mapAttrs (_: unit) (ours c.systemd.services);
      etc = c.environment.etc;
      configPath = "supabase-manager/config.toml";
      out = {
        enabled = sm.enable;
        options = {
          inherit (sm)
            dataDir
            domain
            scheme
            publicPort
            portRange
            openFirewall
            ipAddressAllow
            settings
            caddy
            maintenance
            backup
            metrics
            ;
          package = sm.package.name;
        };
        failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
        inherit (c) warnings;
        inherit services;
        caddyUnit =
          if c.systemd.services ? caddy then
            {
              inherit (c.systemd.services.caddy) serviceConfig restartTriggers;
            }
          else
            null;
        timers = mapAttrs (_: timer: { inherit (timer) description wantedBy timerConfig; }) (
          ours c.systemd.timers
        );
        tmpfiles = c.systemd.tmpfiles.settings;
        firewall = {
          inherit (c.networking.firewall) allowedTCPPorts allowedUDPPorts;
        };
        docker = c.virtualisation.docker.enable;
        systemPackages = map (p: p.name) c.environment.systemPackages;
        variables = c.environment.variables;
        configFile = if etc ? ${configPath} then etc.${configPath}.source.value else null;
        caddy = {
          inherit (c.services.caddy)
            enable
            user
            group
            globalConfig
            extraConfig
            ;
          caddyfile = caddyfile c.services.caddy;
        };
        groups = builtins.attrNames c.users.groups;
      };
    in
    out
    // {
      scripts = builtins.listToAttrs (scriptsIn [
        c.environment.systemPackages
        services
      ]);
    };

  goods = mapAttrs (_: module: summary (evaluate module)) (
    configurations.good // mapAttrs (_: path: import path) extra
  );
in
if bad == null then
  goods
else
  # Forcing the whole summary reaches every option value, so a bad one throws.
  builtins.deepSeq (summary (evaluate configurations.bad.${bad})) "evaluated without an error"
