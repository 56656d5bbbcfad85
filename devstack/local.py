"""What `aiwrap dev` keeps under its data folder, and what the other commands read of it.

`dev-secrets.json` holds the local webhook secret, service key and the public key of a
dev key pair (`CLERK_JWT_KEY`), made once and kept across restarts; the private key is
`dev-jwt-private.pem`, which `aiwrap token` signs session tokens with, as Clerk would.
`dev-env.json` holds the URLs of the running stack, so that `aiwrap budget`,
`send-webhook` and `token` find it from the same folder with nothing exported.
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Final

#: Where `aiwrap dev` keeps its data unless told otherwise (relative to where it runs).
DEFAULT_DATA_DIR: Final = Path(".aiwrap")
PRIVATE_KEY_FILE: Final = "dev-jwt-private.pem"


def _write_private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def dev_secrets(data_dir: Path) -> dict[str, str]:
    """The local webhook secret, service key and JWT public key: made once, then read
    back (a folder from before the key pair gets one)."""
    path = data_dir / "dev-secrets.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    made = dict(stored)
    made.setdefault(
        "CLERK_WEBHOOK_SECRET", "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    )
    made.setdefault("AIWRAP_API_KEYS", "aiw_dev_" + secrets.token_urlsafe(24))
    if "CLERK_JWT_KEY" not in made or not (data_dir / PRIVATE_KEY_FILE).exists():
        from .tokens import new_key_pair

        private_pem, public_pem = new_key_pair()
        data_dir.mkdir(parents=True, exist_ok=True)
        _write_private(data_dir / PRIVATE_KEY_FILE, private_pem)
        made["CLERK_JWT_KEY"] = public_pem
    if made != stored:
        data_dir.mkdir(parents=True, exist_ok=True)
        _write_private(path, json.dumps(made, indent=2))
    return made


def write_dev_env(data_dir: Path, values: dict[str, str]) -> None:
    """Record where the running stack is, for the other commands."""
    _write_private(data_dir / "dev-env.json", json.dumps(values, indent=2))


def dev_env(data_dir: Path = DEFAULT_DATA_DIR) -> dict[str, str]:
    """The running stack's URLs and secrets, or {} when no `aiwrap dev` ran here."""
    env_file, secrets_file = data_dir / "dev-env.json", data_dir / "dev-secrets.json"
    found: dict[str, str] = {}
    for path in (secrets_file, env_file):
        if path.exists():
            found |= json.loads(path.read_text())
    return found


def private_key(data_dir: Path = DEFAULT_DATA_DIR) -> str | None:
    """The dev key pair's private key, or None when `aiwrap dev` never ran here."""
    path = data_dir / PRIVATE_KEY_FILE
    return path.read_text() if path.exists() else None
