# A small stand-in for the parts of nixpkgs that nix/package.nix, flake.nix and nix/tests/vm.nix use,
# written with builtins only, so that CI can evaluate them where nixpkgs cannot be fetched (see
# eval.nix; the module itself goes through the real lib in module-eval.nix).
#
# It is not nixpkgs: derivations are attribute sets with a made-up store path that keep what they
# were given. A name this file does not define (a misspelt lib function, an unknown Python package)
# makes the evaluation fail, which is the point.
let
  inherit (builtins)
    concatStringsSep
    functionArgs
    intersectAttrs
    isFunction
    listToAttrs
    map
    ;

  fakeHash = "00000000000000000000000000000000";
  drv =
    name: extra:
    {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/${fakeHash}-${name}";
      meta = { };
    }
    // extra;

  lib = {
    mkDefault = content: {
      _type = "override";
      priority = 1000;
      inherit content;
    };
    getExe = pkg: "${pkg}/bin/${pkg.meta.mainProgram}";
    makeBinPath = pkgs: concatStringsSep ":" (map (p: "${p}/bin") pkgs);
    genAttrs =
      names: f:
      listToAttrs (
        map (n: {
          name = n;
          value = f n;
        }) names
      );
    licenses.asl20 = {
      spdxId = "Apache-2.0";
    };
    platforms.linux = [
      "x86_64-linux"
      "aarch64-linux"
    ];
    fileset = {
      toSource =
        { root, fileset }:
        {
          _type = "fileset-source";
          root = toString root;
          files = fileset;
        };
      unions = map toString;
      # The checks look at the files named; which of them git tracks is left to real Nix.
      intersection = tracked: files: files;
      gitTracked = root: toString root;
    };
    nixosSystem =
      { modules }:
      {
        _modules = modules;
        config.services.caddy = {
          configFile = "/nix/store/${fakeHash}-Caddyfile";
          package = drv "caddy" { meta.mainProgram = "caddy"; };
        };
      };
  };

  # nixpkgs attribute names of the Python packages the project uses, at run time and in tests.
  pythonPackageNames = [
    "attrs"
    "bcrypt"
    "cattrs"
    "cryptography"
    "docker"
    "hatchling"
    "httpx"
    "keyring"
    "moto"
    "prometheus-client"
    "prompt-toolkit"
    "psycopg"
    "pyjwt"
    "pytest"
    "pytestCheckHook"
    "pytest-timeout"
    "python-on-whales"
    "pyyaml"
    "websockets"
  ];
  python3Packages =
    listToAttrs (
      map (n: {
        name = n;
        value = drv "python3.12-${n}" { pname = n; };
      }) pythonPackageNames
    )
    // {
      buildPythonApplication = attrs: drv "${attrs.pname}-${attrs.version}" attrs;
    };

  pkgs = {
    inherit lib python3Packages;
    stdenv.hostPlatform.system = "x86_64-linux";
    docker = drv "docker" { meta.mainProgram = "docker"; };
    docker-client = drv "docker-client" { meta.mainProgram = "docker"; };
    docker-compose = drv "docker-compose" { meta.mainProgram = "docker-compose"; };
    restic = drv "restic" { meta.mainProgram = "restic"; };
    caddy = drv "caddy" { meta.mainProgram = "caddy"; };
    ruff = drv "ruff" { };
    nix = drv "nix" { };
    python3 = drv "python3" {
      withPackages = f: drv "python3-env" { packages = f python3Packages; };
    };
    callPackage =
      fn: args:
      let
        f = if isFunction fn then fn else import fn;
      in
      f (intersectAttrs (functionArgs f) pkgs // args);
    mkShell = attrs: drv "nix-shell" attrs;
    writeText = name: text: drv name { inherit text; };
    runCommand = name: env: script: drv name (env // { inherit script; });
    testers.runNixOSTest = test: drv "vm-test-run" { inherit test; };
  };
in
{
  inherit lib pkgs pythonPackageNames;
}
