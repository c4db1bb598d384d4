# A small stand-in for the parts of nixpkgs that nix/*.nix and flake.nix use, written with builtins
# only, so that CI can evaluate them where nixpkgs cannot be fetched (see eval.nix).
#
# It is not nixpkgs: option types only check values, mkIf/mkMerge are resolved by `resolve` below,
# and derivations are attribute sets with a made-up store path. A name this file does not define
# (a misspelt lib function, an unknown Python package) makes the evaluation fail, which is the point.
let
  inherit (builtins)
    attrNames
    concatLists
    concatStringsSep
    elem
    foldl'
    functionArgs
    intersectAttrs
    isAttrs
    isBool
    isFunction
    isInt
    isList
    isPath
    isString
    listToAttrs
    map
    match
    substring
    ;

  fakeHash = "00000000000000000000000000000000";
  drv = name: extra: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/${fakeHash}-${name}";
    meta = { };
  } // extra;

  mkType = name: check: {
    _type = "option-type";
    inherit name check;
  };

  types = {
    bool = mkType "bool" isBool;
    str = mkType "str" isString;
    lines = mkType "lines" isString;
    int = mkType "int" isInt;
    port = mkType "port" (v: isInt v && v >= 0 && v <= 65535);
    path = mkType "path" (v: isPath v || (isString v && substring 0 1 v == "/"));
    package = mkType "package" (v: isAttrs v && v ? outPath);
    attrs = mkType "attrs" isAttrs;
    enum = values: mkType "enum" (v: elem v values);
    strMatching = pattern: mkType "strMatching" (v: isString v && match pattern v != null);
    nullOr = t: mkType "nullOr ${t.name}" (v: v == null || t.check v);
    listOf = t: mkType "listOf ${t.name}" (v: isList v && builtins.all t.check v);
  };

  # Definitions are resolved by `resolve`: absent marks a false mkIf.
  absent = {
    _type = "absent";
  };

  mergeTwo =
    path: a: b:
    if a == absent then
      b
    else if b == absent then
      a
    else if isList a && isList b then
      a ++ b
    else if isAttrs a && isAttrs b && !(a ? outPath) && !(b ? outPath) then
      let
        names = attrNames (a // b);
      in
      listToAttrs (
        map (n: {
          name = n;
          value =
            if a ? ${n} && b ? ${n} then
              mergeTwo (path + "." + n) a.${n} b.${n}
            else if a ? ${n} then
              a.${n}
            else
              b.${n};
        }) names
      )
    else if a == b then
      a
    else
      throw "conflicting definitions of ${path}";

  lib = rec {
    inherit types;
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = what: mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = "Whether to enable ${what}.";
    };
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    mkMerge = contents: {
      _type = "merge";
      inherit contents;
    };
    mkDefault = content: {
      _type = "override";
      priority = 1000;
      inherit content;
    };
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
    optional = condition: x: if condition then [ x ] else [ ];
    optionals = condition: xs: if condition then xs else [ ];
    optionalString = condition: s: if condition then s else "";
    recursiveUpdate =
      a: b:
      a
      // builtins.mapAttrs (
        n: v: if isAttrs v && a ? ${n} && isAttrs a.${n} then recursiveUpdate a.${n} v else v
      ) b;
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
      maybeMissing = toString;
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

  # Turns mkIf/mkMerge/mkDefault trees into plain values, as the module system would for one module.
  resolve =
    path: value:
    if isAttrs value && value ? _type then
      if value._type == "if" then
        if value.condition then resolve path value.content else absent
      else if value._type == "merge" then
        foldl' (acc: part: mergeTwo path acc (resolve path part)) absent value.contents
      else if value._type == "override" then
        resolve path value.content
      else
        value
    else if isAttrs value && !(value ? outPath) then
      let
        resolved = builtins.mapAttrs (n: v: resolve (path + "." + n) v) value;
      in
      removeAbsent resolved
    else
      value;
  removeAbsent = attrs: builtins.removeAttrs attrs (builtins.filter (n: attrs.${n} == absent) (attrNames attrs));

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
    "prompt-toolkit"
    "psycopg"
    "pyjwt"
    "pytest"
    "pytest-timeout"
    "python-on-whales"
    "pyyaml"
    "websockets"
  ];
  python3Packages = listToAttrs (
    map (n: {
      name = n;
      value = drv "python3.12-${n}" { pname = n; };
    }) pythonPackageNames
  ) // {
    buildPythonApplication = attrs: drv "${attrs.pname}-${attrs.version}" attrs;
  };

  pkgs = rec {
    inherit lib python3Packages;
    stdenv.hostPlatform.system = "x86_64-linux";
    makeWrapper = drv "make-wrapper" { };
    docker = drv "docker" { meta.mainProgram = "docker"; };
    docker-compose = drv "docker-compose" { meta.mainProgram = "docker-compose"; };
    caddy = drv "caddy" { meta.mainProgram = "caddy"; };
    ruff = drv "ruff" { };
    nix = drv "nix" { };
    python3 = drv "python3" {
      withPackages = f: drv "python3-env" { packages = f python3Packages; };
    };
    formats.toml =
      { }:
      {
        type = types.attrs;
        generate =
          name: value:
          drv name {
            # Kept for eval.nix: what pkgs.formats.toml would write out.
            generatedFrom = value;
          };
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
  inherit
    lib
    pkgs
    resolve
    absent
    pythonPackageNames
    ;
}
