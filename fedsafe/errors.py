"""The one error type a user's input raises: a configuration value, data source or file is wrong.

It lives below every other module so that each layer can raise it; ``fedsafe.config`` re-exports it.
"""


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; the message names the key and the fix."""


def check(ok: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def check_sampling(temperature: float, top_p: float, prefix: str = "") -> None:
    """Sampling settings a generator accepts: ``temperature`` >= 0 (0 = greedy), ``top_p`` in (0, 1]."""
    check(temperature >= 0, f"{prefix}temperature must be >= 0 (0 = greedy), got {temperature}")
    check(0 < top_p <= 1, f"{prefix}top_p must be in (0, 1] (1 = no nucleus cut), got {top_p}")
