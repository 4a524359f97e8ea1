"""YAML that people edit by hand (the registry, rule packs): safe, strict, with line numbers.

Duplicate keys are errors (one would silently win), and every mapping remembers its own
line and each key's line so an error can say where to look.
"""

from __future__ import annotations

from typing import Any

import yaml


class Map(dict):
    """A YAML mapping that remembers its line and each key's line, for error messages."""

    line: int = 0
    key_lines: dict[Any, int]


class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML that rejects duplicate keys and keeps lines."""


def _construct_map(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Map:
    lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = lines.get(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark) from None
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {first})", key_node.start_mark)
        lines[key] = key_node.start_mark.line + 1
    loader.flatten_mapping(node)  # "<<: *defaults" merges; explicit keys win
    result = Map()
    result.line, result.key_lines = node.start_mark.line + 1, lines
    for key_node, value_node in node.value:
        result[loader.construct_object(key_node, deep=True)] = loader.construct_object(
            value_node, deep=True)
    return result


Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def load(data: bytes | str) -> Any:
    return yaml.load(data, Loader=Loader)  # a SafeLoader subclass
