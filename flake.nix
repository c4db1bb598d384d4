{
  description = "supabase-manager: many isolated self-hosted Supabase instances on one host, published through Caddy";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        supabase-manager = pkgs.callPackage ./nix/package.nix { };
        default = supabase-manager;
      });

      # The module, with this flake's build of the program as its default package.
      nixosModules.supabase-manager =
        { pkgs, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.supabase-manager.package =
            lib.mkDefault
              self.packages.${pkgs.stdenv.hostPlatform.system}.supabase-manager;
        };
      nixosModules.default = self.nixosModules.supabase-manager;

      # What CI and a developer need to run the test suite: the program's dependencies, the test
      # tools, the docker CLI with compose, Caddy, restic and Nix itself (tests/test_nix.py).
      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (
              ps: with ps; [
                # runtime (as in nix/package.nix)
                httpx
                docker
                python-on-whales
                attrs
                cattrs
                prompt-toolkit
                keyring
                pyjwt
                cryptography
                bcrypt
                pyyaml
                prometheus-client
                # build and tests
                hatchling
                pytest
                pytest-timeout
                websockets
                psycopg
                moto
              ]
            ))
            pkgs.ruff
            pkgs.caddy
            pkgs.docker
            pkgs.docker-compose
            pkgs.restic
            pkgs.nix
          ];
        };
      });

      checks = forAllSystems (
        pkgs:
        let
          system = pkgs.stdenv.hostPlatform.system;
          # A small host with the module on, to read the Caddyfile NixOS generates from it.
          host = lib.nixosSystem {
            modules = [
              self.nixosModules.default
              {
                nixpkgs.hostPlatform = system;
                boot.loader.grub.enable = false;
                fileSystems."/" = {
                  device = "none";
                  fsType = "tmpfs";
                };
                system.stateVersion = "25.05";
                services.supabase-manager = {
                  enable = true;
                  domain = "example.test";
                };
              }
            ];
          };
          caddy = host.config.services.caddy;
        in
        {
          package = self.packages.${system}.supabase-manager;

          # The harnesses CI runs with nix-instantiate: the module through the real module system
          # in every configuration of nix/tests/configurations.nix, and the package, flake and VM
          # test against a builtins-only stand-in. Either throws on a broken file.
          module = pkgs.writeText "supabase-manager-module-eval.json" (
            builtins.toJSON (import ./nix/tests/module-eval.nix { inherit lib; })
          );
          eval = pkgs.writeText "supabase-manager-eval.json" (
            builtins.toJSON (import ./nix/tests/eval.nix { })
          );

          # Caddy itself accepts the Caddyfile the module produces.
          caddyfile = pkgs.runCommand "supabase-manager-caddyfile" { } ''
            export HOME=$TMPDIR XDG_DATA_HOME=$TMPDIR/data XDG_CONFIG_HOME=$TMPDIR/config
            grep -F 'import /var/lib/supabase/caddy/*.conf' ${caddy.configFile}
            grep -F 'name supabase' ${caddy.configFile}
            ${lib.getExe caddy.package} validate --config ${caddy.configFile} --adapter caddyfile
            touch $out
          '';

          # Boots the module with Docker and Caddy (needs KVM).
          vm = pkgs.testers.runNixOSTest ./nix/tests/vm.nix;
        }
      );
    };
}
