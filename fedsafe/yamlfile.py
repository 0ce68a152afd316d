"""Reading config YAML: one mapping per file, a repeated key an error, ``base:`` chains followed, sizes and
alias expansion bounded, every problem one ``ConfigError`` line; and what merging the layers needs (a layer
written by an older fedsafe ``upgraded``, an attack's or rule's params cleared when a layer names another)."""

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

    def construct_yaml_bool(self, node):
        """Only ``true`` and ``false``: YAML 1.1 also reads yes/no/on/off (a name ``no`` would become False)."""
        if node.value.lower() not in ("true", "false"):
            raise yaml.constructor.ConstructorError(None, None, f"{node.value!r} reads as a boolean in YAML 1.1; "
                                                    "write true or false, or quote it as text", node.start_mark)
        return super().construct_yaml_bool(node)

    def construct_yaml_int(self, node):
        """Plain decimal integers: YAML 1.1 reads 010 as 8, 1_000 as 1000 and 1:30 as 90."""
        text = node.value.lstrip("+-")
        if (len(text) > 1 and text[0] == "0" and text[1:2] not in ("x", "o", "b")) or "_" in text or ":" in text:
            raise yaml.constructor.ConstructorError(None, None, f"{node.value!r} is a YAML 1.1 integer form (octal, "
                                                    "digit groups or base 60); write the decimal number, or quote "
                                                    "it as text", node.start_mark)
        return super().construct_yaml_int(node)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:bool", _UniqueKeyLoader.construct_yaml_bool)
_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _UniqueKeyLoader.construct_yaml_int)


MAX_CONFIG_BYTES = 1 << 20  # a config file (configs/ hold a few KiB)
MAX_NODES = 100_000  # YAML nodes once aliases are expanded (configs/ hold a few hundred)


def expanded_nodes(node: yaml.Node | None) -> int:
    """How many nodes ``node`` stands for once every alias is expanded (an alias is the node it names), counted
    without expanding: a few hundred bytes of nested aliases can stand for billions."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        if id(n) not in sizes:
            sizes[id(n)] = 0  # a recursive alias counts once
            children = [c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode) else \
                n.value if isinstance(n, yaml.SequenceNode) else []
            sizes[id(n)] = min(1 + sum(size(c) for c in children), MAX_NODES + 1)
        return sizes[id(n)]

    return size(node) if node is not None else 0


def load_bounded(text: str, what: str):
    """The value YAML ``text`` holds, refused with one line when it is not valid YAML or its aliases expand past
    ``MAX_NODES`` nodes; ``what`` names it in errors."""
    try:
        if expanded_nodes(yaml.compose(text, Loader=_UniqueKeyLoader)) > MAX_NODES:
            raise ConfigError(f"{what}: its aliases expand to more than {MAX_NODES} values; write the values out")
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} is not valid YAML: {yaml_problem(err)}") from None


def parse_yaml(text: str, what: str) -> dict:
    """The mapping a config's YAML ``text`` holds ({} when empty); ``what`` names it in errors."""
    data = load_bounded(text, what)
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
    if path.exists() and not path.is_file():
        raise ConfigError(f"config file {path} is not a regular file (a device, a pipe or a socket); pass a YAML file")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} holds {path.stat().st_size} bytes, more than a config's "
                              f"{MAX_CONFIG_BYTES}; pass a YAML config file")
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


ENV_INTERPOLATION = re.compile(r"\$\{\s*oc\.env\s*:")


def reads_environment(value) -> bool:
    """An interpolation that would copy an environment variable into the config (and so into config.yaml and
    the trackers' parameters, where a secret must never go)."""
    return isinstance(value, str) and ENV_INTERPOLATION.search(value) is not None


NAMED_PARAMS = (("attack", "name", "params"), ("aggregation", "rule", "params"))


def clear_stale_params(merged, layer: dict) -> None:
    """Empty ``params`` in ``merged`` (an OmegaConf config) where ``layer`` names another attack or rule (its own
    params, if it gives any, then merge into nothing): parameters belong to the attack or rule they were
    written for, not to the next one."""
    for section, name_key, params_key in NAMED_PARAMS:
        given = layer.get(section)
        if isinstance(given, dict) and name_key in given and given[name_key] != merged[section][name_key]:
            merged[section][params_key] = {}


def upgraded(layer: dict) -> dict:
    """A config mapping written before ``output.trackers`` (a run folder's config.yaml): its
    ``output.tensorboard`` flag becomes the tracker list."""
    output = layer.get("output")
    if isinstance(output, dict) and isinstance(output.get("tensorboard"), bool) and "trackers" not in output:
        output = {k: v for k, v in output.items() if k != "tensorboard"}
        output["trackers"] = ["tensorboard"] if layer["output"]["tensorboard"] else []
        return {**layer, "output": output}
    return layer


_KINDS = {"Integer": "a whole number", "Float": "a number", "Boolean": "true or false", "String": "text"}


def omegaconf_problem(err: Exception) -> str:
    """An OmegaConf error as one line in fedsafe's words: the key, what it must be, and how to write it."""
    key = getattr(err, "full_key", None) or ""
    first = str(err).splitlines()[0]
    if match := re.search(r"Key '([^']+)' not in '(\w+)'", first):
        section = key.rsplit(".", 1)[0] if "." in key else "the config"
        return (f"{key or match.group(1)} is not a setting of {section} (each section's settings are the fields of "
                "its config class: fedsafe/config.py and each component's config.py)")
    if "is not Optional" in first:
        return f"{key} must be given a value (null is not allowed here)"
    if match := re.search(r"could not be converted to (\w+)", first):
        return f"{key} must be {_KINDS.get(match.group(1), match.group(1))}, got {getattr(err, 'value', None)!r}"
    if "is not a valid bool" in first:
        return f"{key} must be true or false, got {getattr(err, 'value', None)!r}"
    if re.search(r"Cannot assign \w+ to Dict", first):
        return f"{key} must be a mapping (e.g. {key}: {{name: value}})"
    if "is not a ListConfig" in first:
        return f"{key} must be a list (e.g. {key}=[a, b])"
    if re.fullmatch(r"clients\[\d+\]", key) and "is not a subclass of" in first:
        return (f"{key}: there is no client group {key[8:-1]} to change; the groups are a list (clients.0, clients.1, "
                "...): give the whole list to add one (clients=[{name: ..., role: ..., count: ...}, ...])")
    if "is not a subclass of" in first or "Cannot merge incompatible container types" in first:
        return f"{key} is a section: give its settings as a mapping ({key}: {{setting: value}}) or as {key}.setting=value"
    return f"{key}: {first}" if key else first
