# `pkgs` for nix/tests/module-eval.nix: the packages and builders nix/module.nix and
# nix/package.nix use, as attribute sets that look like derivations. Nothing is built and the store
# is never written; builders keep what they were given (a script's text, a config file's value) so
# that the checks can read it. Python packages come from ./fake.nix.
{ lib }:

let
  fake = import ./fake.nix;

  drv =
    name: extra:
    {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" name)}-${name}";
      meta = { };
    }
    // extra;

  pkgs = fake.pkgs // {
    inherit lib;

    # pkgs.formats.toml: the option type nixpkgs gives it, and the value kept for the checks.
    formats = {
      toml =
        { }:
        {
          type =
            with lib.types;
            let
              valueType =
                oneOf [
                  bool
                  int
                  float
                  str
                  path
                  (attrsOf valueType)
                  (listOf valueType)
                ]
                // {
                  description = "TOML value";
                };
            in
            valueType;
          generate = name: value: drv name { inherit value; };
        };
    };

    writeShellScript = name: text: drv name { inherit text; };
    writeShellScriptBin =
      name: text:
      drv name {
        inherit text;
        meta.mainProgram = name;
      };

    coreutils = drv "coreutils" { };
    restic = drv "restic" { meta.mainProgram = "restic"; };
    openssh = drv "openssh" { meta.mainProgram = "ssh"; };
    systemd = drv "systemd" { };
    docker-client = drv "docker-client" { meta.mainProgram = "docker"; };
    pytestCheckHook = drv "pytest-check-hook" { };
    caddy = drv "caddy" {
      meta.mainProgram = "caddy";
      withPlugins = { plugins, hash }: drv "caddy-with-plugins" { meta.mainProgram = "caddy"; };
    };

    callPackage =
      fn: args:
      let
        f = if builtins.isFunction fn then fn else import fn;
      in
      f (builtins.intersectAttrs (builtins.functionArgs f) pkgs // args);
  };
in
pkgs
