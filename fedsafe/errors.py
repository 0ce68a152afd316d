"""The error types a user's input raises: a configuration value, data source or file is wrong
(``ConfigError``), or a worker's environment cannot run it (``WorkerSetupError``).

It lives below every other module so that each layer can raise it; ``fedsafe.config`` re-exports it.
"""


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; the message names the key and the fix."""


class WorkerSetupError(ConfigError):
    """A worker (trainer or generation replica) could not load its model or a package: the message names the
    node, what failed and the fix (the run stops with it instead of waiting for a start-up timeout)."""


def check(ok: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def check_sampling(temperature: float, top_p: float, prefix: str = "") -> None:
    """Sampling settings a generator accepts: ``temperature`` >= 0 (0 = greedy), ``top_p`` in (0, 1]."""
    check(temperature >= 0, f"{prefix}temperature must be >= 0 (0 = greedy), got {temperature}")
    check(0 < top_p <= 1, f"{prefix}top_p must be in (0, 1] (1 = no nucleus cut), got {top_p}")
