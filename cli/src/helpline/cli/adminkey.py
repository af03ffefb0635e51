"""The admin API key of a `helpline up` without HELPLINE_ADMIN_KEY: made on first start,
kept in the data dir readable by its owner only (as Jupyter keeps its token), and found
there again by the CLI."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

#: The file in the data dir.
ADMIN_KEY_FILE = "admin-key"


def admin_key_path(data_dir: Path) -> Path:
    return Path(data_dir) / ADMIN_KEY_FILE


def ensure_admin_key(data_dir: Path) -> tuple[str, Path, bool]:
    """The key stored in `data_dir` (made now if there is none): key, path, made now."""
    path = admin_key_path(data_dir)
    existing = read_admin_key(data_dir)
    if existing:
        return existing, path, False
    key = "hl_" + secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created owner-only: the key is never readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    os.chmod(path, 0o600)
    return key, path, True


def read_admin_key(data_dir: Path) -> str | None:
    try:
        return admin_key_path(data_dir).read_text().strip() or None
    except OSError:
        return None
