# supabase-manager built from this checkout: `pkgs.callPackage ./nix/package.nix { }`.
{
  lib,
  python3Packages,
  makeWrapper,
  docker,
  docker-compose,
}:

let
  # The version lives in one place: pyproject.toml.
  pyproject = builtins.fromTOML (builtins.readFile ../pyproject.toml);
in
python3Packages.buildPythonApplication {
  pname = "supabase-manager";
  inherit (pyproject.project) version;
  pyproject = true;

  # Only what the wheel is built from, so that edits to tests or docs do not rebuild it.
  # README.md is the project's readme in pyproject.toml: hatchling needs it to build.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../controller
      ../shell
      (lib.fileset.maybeMissing ../README.md)
      (lib.fileset.maybeMissing ../LICENSE)
    ];
  };

  build-system = [ python3Packages.hatchling ];

  nativeBuildInputs = [ makeWrapper ];

  # `python3Packages.docker` is the Docker SDK for Python; the argument `docker` above is the CLI.
  dependencies = with python3Packages; [
    httpx
    python3Packages.docker
    python-on-whales
    attrs
    cattrs
    prompt-toolkit
    keyring
    pyjwt
    cryptography # pyjwt[crypto]
    bcrypt
    pyyaml
  ];

  # The program drives the docker CLI and its compose plugin (python-on-whales runs `docker
  # compose ...`): both go first on its PATH, so that the units (whose PATH has neither) and
  # every caller use the same docker CLI with its compose plugin.
  makeWrapperArgs = [
    "--prefix"
    "PATH"
    ":"
    (lib.makeBinPath [
      docker
      docker-compose
    ])
  ];

  # The test suite needs a Docker engine, Caddy and network: it runs in the project's CI, not in
  # the sandbox. Importing every module catches a missing dependency.
  doCheck = false;
  pythonImportsCheck = [
    "controller.manager"
    "shell.cli"
  ];

  meta = {
    description = pyproject.project.description;
    license = lib.licenses.asl20;
    mainProgram = "supabase-manager";
    platforms = lib.platforms.linux;
  };
}
