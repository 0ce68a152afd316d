"""The one error type a user's input raises: a configuration value, data source or file is wrong.

It lives below every other module so that each layer can raise it; ``fedsafe.config`` re-exports it.
"""


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; the message names the key and the fix."""


def check(ok: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)
