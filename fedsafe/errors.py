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


def check_label(value: str, key: str) -> None:
    """A name shown in tables and file listings (an arm, a client group): not empty, no ``|`` (a table cell's
    edge), no control character or line break, no space at either end."""
    check(bool(value.strip()), f"{key} must not be empty")
    bad = next((c for c in value if c == "|" or not c.isprintable()), None)
    check(bad is None, f"{key} must not hold {bad!r} (a table separator or a control character), got {value!r}")
    check(value == value.strip(), f"{key} must not start or end with a space, got {value!r}")
