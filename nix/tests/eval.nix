# Evaluation harness that needs no nixpkgs (tests/test_nix.py runs it; so does the flake's
# checks.eval):
#
#   nix-instantiate --eval --strict --json nix/tests/eval.nix \
#     --arg options '{ domain = "example.dev"; caddy.adminAddress = "unix//run/caddy/admin.sock"; }'
#
# Pass --arg options (at least '{}'): Nix 2.8 (Debian's nix-bin) does not call a file's function
# with its defaults unless some --arg is given.
# `options` are values for services.supabase-manager (enable is true unless given); `caddy` are
# values for services.caddy as other modules would set them (group, resume, settings).
#
# It evaluates nix/module.nix against ./fake.nix (a builtins-only stand-in for nixpkgs' lib and
# pkgs), nix/package.nix through the fake callPackage, the flake's outputs against a fake nixpkgs
# input, and nix/tests/vm.nix's shape. Anything misspelt or misshapen throws; the JSON it prints is
# what the Python tests assert on.
{
  options ? { },
  caddy ? { },
}:
let
  inherit (builtins)
    attrNames
    concatLists
    filter
    isAttrs
    isFunction
    map
    mapAttrs
    toString
    ;

  sm = import ../lib.nix;
  fake = import ./fake.nix;
  inherit (fake) lib pkgs;

  # Values for an option tree: the given value or the default, each checked against its type.
  optionValues =
    path: decls: given:
    let
      unknown = filter (name: !(decls ? ${name})) (attrNames given);
    in
    if unknown != [ ] then
      throw "${path}: no such option(s): ${toString unknown}"
    else
      mapAttrs (
        name: decl:
        let
          here = "${path}.${name}";
        in
        if (decl._type or null) == "option" then
          let
            value = if given ? ${name} then given.${name} else decl.default;
          in
          if decl.type.check value then
            value
          else
            throw "${here}: ${builtins.toJSON value} is not a valid ${decl.type.name}"
        else
          optionValues here decl (given.${name} or { })
      ) decls;

  # Option paths without a description or a type: every option must be documented and typed.
  undocumented =
    path: decls:
    concatLists (
      map (
        name:
        let
          decl = decls.${name};
          here = "${path}.${name}";
        in
        if (decl._type or null) == "option" then
          if decl ? description && decl ? type && decl.description != "" then [ ] else [ here ]
        else
          undocumented here decl
      ) (attrNames decls)
    );

  optionPaths =
    path: decls:
    concatLists (
      map (
        name:
        let
          decl = decls.${name};
          here = if path == "" then name else "${path}.${name}";
        in
        if (decl._type or null) == "option" then [ here ] else optionPaths here decl
      ) (attrNames decls)
    );

  caddyValues = {
    group = "caddy";
    resume = false;
    settings = { };
  } // caddy;

  module = import ../module.nix {
    inherit lib pkgs;
    config = {
      services.supabase-manager = cfg;
      services.caddy = caddyValues;
    };
  };
  decls = module.options.services.supabase-manager;
  cfg = optionValues "services.supabase-manager" decls ({ enable = true; } // options);

  resolved = fake.resolve "config" module.config;
  enabled = resolved != fake.absent;

  configFileDrv = resolved.environment.etc.${sm.etcConfigName}.source;

  # The program's package, as module.nix builds it by default.
  package = cfg.package;

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
  inherit enabled;
  options = cfg // {
    package = package.name;
  };
  optionPaths = optionPaths "" decls;
  undocumented = undocumented "services.supabase-manager" decls;

  # lib.nix on its own
  lib = {
    inherit (sm) defaults configFile;
    settings = sm.settings cfg;
    environment = sm.environment cfg;
    globalConfig = sm.caddyGlobalConfig cfg;
    extraConfig = sm.caddyExtraConfig cfg;
    tmpfiles = sm.tmpfilesRules cfg;
    problems = sm.problems cfg;
    portRanges = map (r: {
      range = r;
      valid = sm.validPortRange r;
    }) [
      "20000-29999"
      "1024-65535"
      "1023-2000"
      "3000-2000"
      "100-70000"
      "20000"
      "020000-029999"
    ];
  };

  # the module's config, mkIf/mkMerge resolved; null when enable = false
  config = if enabled then resolved else null;
  configFile =
    if enabled then
      {
        path = "/etc/${sm.etcConfigName}";
        name = configFileDrv.name;
        contents = configFileDrv.generatedFrom;
      }
    else
      null;
  failedAssertions =
    if enabled then map (a: a.message) (filter (a: !a.assertion) resolved.assertions) else [ ];

  package = {
    inherit (package) pname version pyproject;
    dependencies = map (d: d.pname) package.dependencies;
    buildSystem = map (d: d.pname) package.build-system;
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
    devShellPython = map (d: d.pname) (
      builtins.head outputs.devShells.x86_64-linux.default.packages
    ).packages;
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
