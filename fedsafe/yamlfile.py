"""Reading config YAML: one mapping per file, a repeated key an error, ``base:`` chains followed, every
problem one ``ConfigError`` line."""

from __future__ import annotations

import math
import re
from pathlib import Path

import yaml

from fedsafe.errors import ConfigError


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: where, and what."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(getattr(err, "problem", None) or err).split())


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key repeated in one mapping is an error (YAML would keep the last)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
        if repeated:
            raise yaml.constructor.ConstructorError(None, None, f"key {repeated[0]!r} appears twice in one mapping",
                                                    node.start_mark)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, what: str) -> dict:
    """The mapping a config's YAML ``text`` holds ({} when empty); ``what`` names it in errors."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} is not valid YAML: {yaml_problem(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must hold a mapping of keys (e.g. federation: {{num_rounds: 3}}), "
                          f"got a {type(data).__name__}")
    return data


def yaml_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[dict]:
    """The YAML mappings of ``path`` and its ``base`` chain, base first."""
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; pass a YAML file")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file to --config") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read as text ({err}); pass a YAML file") from None
    data = parse_yaml(text, f"config file {path}")
    base = data.pop("base", None)
    if base is None:
        return [data]
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config file {path}: base must name another YAML file, got {base!r}")
    parent = (path.parent / base).resolve()
    if parent in seen:
        raise ConfigError(f"config file {path}: its base chain loops back to {parent}")
    return yaml_layers(parent, seen + (path.resolve(),)) + [data]


def first_key(value, test, key: str = "") -> str | None:
    """The dotted key of the first leaf of a nested config value (unresolved) that ``test`` accepts, else None."""
    if not isinstance(value, (dict, list)):
        return key if test(value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for k, v in items:
        found = first_key(v, test, f"{key}.{k}" if key else str(k))
        if found is not None:
            return found
    return None


def non_finite(value) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


ENV_INTERPOLATION = re.compile(r"\$\{\s*oc\.(env|decode)\s*:")


def reads_environment(value) -> bool:
    """An interpolation that would copy an environment variable into the config (and so into config.yaml and
    the trackers' parameters, where a secret must never go)."""
    return isinstance(value, str) and ENV_INTERPOLATION.search(value) is not None
