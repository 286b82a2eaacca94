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

from pathlib import Path
from typing import Any

from neurecon.errors import ConfigError

TRIAL_STORAGE_ENV = "NEURECON_TRIAL_STORAGE"  # set by the sweeper for its trials


def _url(spec: Any) -> Any:
    """The SQLAlchemy URL ``spec`` parses to, or None (a journal path, anything else)."""
    if not isinstance(spec, str) or "://" not in spec:
        return None
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError
    except ImportError:  # no SQL storage can be used without it either: parse it plainly
        return _StdlibURL(spec)
    try:
        return make_url(spec)
    except (ArgumentError, ValueError):
        return None


class _StdlibURL:
    """What :func:`_url` needs of SQLAlchemy's URL where SQLAlchemy is not installed (a run
    without the sweep extras still checks ``callbacks.prune.storage``)."""

    def __init__(self, spec: str) -> None:
        from urllib.parse import urlsplit

        self.spec, self.parts = spec, urlsplit(spec)
        self.password = self.parts.password

    def render_as_string(self, hide_password: bool = True) -> str:
        if self.password is None or not hide_password:
            return self.spec
        netloc = self.parts.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0]
        return self.parts._replace(netloc=f"{user}:***@{netloc[1]}").geturl()


def redact(spec: Any) -> str:
    """``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db``, by SQLAlchemy's
    own URL parser (percent-encoded and odd passwords included); other specs unchanged."""
    url = _url(spec)
    return str(spec) if url is None else url.render_as_string(hide_password=True)


def has_password(spec: Any) -> bool:
    url = _url(spec)
    return url is not None and url.password is not None


def refuse_saved_password(raw: Any, key: str) -> None:
    """Raise :class:`ConfigError` when a config value ``key`` (unresolved: what Hydra saves to
    ``.hydra/*.yaml``) holds a storage URL with a password, naming it redacted."""
    if has_password(raw):
        raise ConfigError(
            f"{key}={redact(raw)}: a password here would be written to .hydra/*.yaml and "
            "multirun.yaml. Leave it out and set PGPASSWORD (or ~/.pgpass), or export "
            f"NEURECON_STORAGE=<url> and pass {key}='${{oc.env:NEURECON_STORAGE}}'"
        )


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
