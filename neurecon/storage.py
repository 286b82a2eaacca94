"""Where Optuna studies live, and how their credentials stay out of every file.

Storage specs (``hydra.sweeper.storage``):

- ``PATH.journal`` (or ``journal:PATH``): Optuna's ``JournalStorage`` on a file, with its file
  lock — the default for local studies. Many processes may append at once (SQLite's
  "database is locked" under concurrent writers is why this is the default);
- any SQLAlchemy URL (``sqlite:///x.db``, ``postgresql+psycopg2://user@host/db``);
- null: in memory (no pruning, no resume).

Credentials come from the environment, never the command line: Hydra writes every override to
``.hydra/*.yaml`` and ``multirun.yaml``. Either leave the password out of the URL and let the
driver find it (``PGPASSWORD``, ``~/.pgpass``), or put the whole URL in an environment
variable and name it with Hydra's resolver, ``hydra.sweeper.storage='${oc.env:NEURECON_STORAGE}'``
(the saved configs keep the ``${...}``, not its value). Trial processes receive the resolved
URL through :data:`TRIAL_STORAGE_ENV`, not through their config.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from neurecon.errors import ConfigError

TRIAL_STORAGE_ENV = "NEURECON_TRIAL_STORAGE"  # set by the sweeper for its trials
_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<tail>@)")


def redact(text: str) -> str:
    """``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db`` (any text)."""
    return _PASSWORD.sub(r"\g<head>***\g<tail>", text)


def has_password(url: Any) -> bool:
    return isinstance(url, str) and bool(_PASSWORD.search(url))


def is_journal(spec: str) -> bool:
    return spec.startswith("journal:") or spec.endswith(".journal")


def open_storage(spec: str | None) -> Any:
    """What ``optuna.create_study(storage=...)`` takes for ``spec`` (see the module docstring)."""
    if spec is None:
        return None
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"hydra.sweeper.storage={spec!r}: not a storage spec")
    if not is_journal(spec):
        return spec  # an SQLAlchemy URL: Optuna builds the RDB storage
    import optuna
    from optuna.storages.journal import JournalFileBackend

    path = Path(spec.removeprefix("journal:").removeprefix("//"))
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
