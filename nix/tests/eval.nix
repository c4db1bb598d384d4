# Evaluation harness that needs neither nixpkgs nor its lib (tests/test_nix.py runs it; so does
# the flake's checks.eval):
#
#   nix-instantiate --eval --strict --json nix/tests/eval.nix --arg unused null
#
# (Nix 2.8, Debian's nix-bin, calls a file's function with its defaults only when some --arg is
# given.) It evaluates nix/package.nix through a fake callPackage, the flake's outputs against a
# fake nixpkgs input, nix/tests/vm.nix's shape, and nix/lib.nix's port range rule, all against
# ./fake.nix, a builtins-only stand-in for the parts of nixpkgs they use: full nixpkgs is not
# available where CI runs. Anything misspelt or misshapen throws; the JSON it prints is what the
# Python tests assert on. The module itself is evaluated with the real lib: ./module-eval.nix.
{
  unused ? null,
}:
let
  inherit (builtins)
    attrNames
    isFunction
    map
    mapAttrs
    toString
    ;

  sm = import ../lib.nix;
  fake = import ./fake.nix;
  inherit (fake) lib pkgs;

  package = pkgs.callPackage ../package.nix { };

  # flake.nix against a fake nixpkgs input.
  flake = import ../../flake.nix;
  fakeNixpkgs = {
    inherit lib;
    legacyPackages = lib.genAttrs [
      "x86_64-linux"
      "aarch64-linux"
    ] (system: pkgs);
  };
  outputs = flake.outputs {
    self = outputs;
    nixpkgs = fakeNixpkgs;
  };
  flakeModule = outputs.nixosModules.default {
    inherit lib pkgs;
    config = { };
  };
  names = attrs: mapAttrs (_: attrNames) attrs;

  vmTest = import outputs.checks.x86_64-linux.vm.test {
    inherit lib pkgs;
  };
  vmNode = vmTest.nodes.machine { inherit lib pkgs; };
in
assert isFunction flake.outputs;
{
  # The port range rule, for comparison with the program's (controller/config.py).
  portRanges =
    map
      (r: {
        range = r;
        valid = sm.validPortRange r;
      })
      [
        "20000-29999"
        "1024-65535"
        "1023-2000"
        "3000-2000"
        "100-70000"
        "20000"
        "020000-029999"
      ];

  package = {
    inherit (package)
      pname
      version
      pyproject
      disabledTestMarks
      enabledTestPaths
      ;
    dependencies = map (d: d.pname) package.dependencies;
    buildSystem = map (d: d.pname) package.build-system;
    checkInputs = map (d: d.pname) package.nativeCheckInputs;
    doCheck = package.doCheck or true;
    makeWrapperArgs = package.makeWrapperArgs;
    mainProgram = package.meta.mainProgram;
    license = package.meta.license.spdxId;
    src = package.src.files;
    srcRoot = package.src.root;
  };

  flake = {
    inherit (flake) description inputs;
    outputs = attrNames outputs;
    packages = names outputs.packages;
    devShells = names outputs.devShells;
    checks = names outputs.checks;
    nixosModules = attrNames outputs.nixosModules;
    moduleImports = map toString flakeModule.imports;
    modulePackage = flakeModule.services.supabase-manager.package.content.name;
    devShellPython = map (d: d.pname) (builtins.head outputs.devShells.x86_64-linux.default.packages)
    .packages;
    devShellTools = map (d: d.name) (builtins.tail outputs.devShells.x86_64-linux.default.packages);
    checkNames = mapAttrs (_: check: check.name) outputs.checks.x86_64-linux;
  };

  vm = {
    inherit (vmTest) name;
    testScriptIsString = builtins.isString vmTest.testScript;
    nodeImports = map toString vmNode.imports;
    nodeSettings = vmNode.services.supabase-manager;
    testScript = vmTest.testScript;
  };
}
