"""User-facing errors: caught by ``train.py`` / ``evaluate.py`` and printed without a traceback."""


class NeuReconError(Exception):
    """Base class for errors caused by input or configuration, not by a bug."""


class ConfigError(NeuReconError, ValueError):
    """An invalid configuration value; the message names the key."""


class DatasetError(NeuReconError, ValueError):
    """Bad or missing dataset input; the message names the file or config key."""


class MeshExtractionError(NeuReconError):
    """The field has no surface to extract."""


class MissingDependencyError(NeuReconError, ImportError):
    """An optional package a feature needs is not installed; the message names it."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (libraries' messages span several), shortened."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
