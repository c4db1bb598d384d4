"""The template's files in the instance folder, written without following any symlink there.

The template's files are copied unchanged (never its .env.example, which carries demo secrets,
nor a .env or override of its own); a few are replaced (the instance's own vector.yml).
"""

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from controller.composefiles import OVERRIDE_FILE
from controller.fsutil import NoFollowTree
from controller.render.extras import EXTRA_RE

_SKIP_FILES = {".env", ".env.example", OVERRIDE_FILE}
_SKIP_DIRS = {".git"}


def copy_template(source: Path, tree: NoFollowTree, replaced: Mapping[str, bytes]) -> None:
    """Bring the files of ``source`` into ``tree``; ``replaced`` gives other bytes for some."""
    for folder, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        here = Path(folder)
        relative = here.relative_to(source)
        if relative != Path("."):  # the instance folder itself stays 0700
            tree.folder(relative, stat.S_IMODE(here.stat().st_mode) | 0o700)
        for filename in sorted(files):
            src = here / filename
            rel = relative / filename
            if relative == Path(".") and filename in _SKIP_FILES:
                continue
            if src.is_symlink() or not src.is_file():
                continue
            mode = stat.S_IMODE(src.stat().st_mode) | 0o600
            data = replaced.get(str(rel))
            tree.write(rel, src.read_bytes() if data is None else data, mode)


def existing_extras(tree: NoFollowTree) -> list[str]:
    """extra-N.yml files in the folder (regular files only), in order."""
    found = []
    with os.scandir(tree.folder(".")) as entries:
        for entry in entries:
            match = EXTRA_RE.match(entry.name)
            if match and entry.is_file(follow_symlinks=False):
                found.append((int(match.group(1)), entry.name))
    return [name for _, name in sorted(found)]
