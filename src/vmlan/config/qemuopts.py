"""QEMU's two option syntaxes: QemuOpts (``key=value,...``) and keyval (dotted keys).

QemuOpts (util/qemu-option.c) is used by ``-netdev socket``, ``-object``, ``-hub``: ``,,`` is a literal
comma, the first item may omit its key (``socket,listen=...`` means ``type=socket``), a bare ``flag``
means ``flag=on``, and a repeated key accumulates (``hostfwd=...`` twice gives a list).

keyval (util/keyval.c) is what QEMU 7.2 uses for ``-netdev stream`` and ``-netdev dgram``: keys may be
dotted paths (``addr.type=unix``) that build nested dictionaries, every item needs ``=`` except the
implied first one, and a repeated key keeps its last value. A JSON object is accepted as well.
"""

from __future__ import annotations

import json
import re
from typing import Any

from vmlan.config.errors import ConfigError

_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]*\Z")
_KEY_FRAGMENT_RE = re.compile(r"[A-Za-z0-9_-]+\Z")

TRUE_WORDS = frozenset({"on", "yes", "true", "y"})
FALSE_WORDS = frozenset({"off", "no", "false", "n"})


def _split_items(text: str) -> list[str]:
    """Split at single commas; ``,,`` stands for a literal comma inside a value."""
    items: list[str] = []
    cur: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == ",":
            if i + 1 < n and text[i + 1] == ",":
                cur.append(",")
                i += 2
                continue
            items.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    items.append("".join(cur))
    return items


def parse_qemuopts(text: str, implied_key: str | None = "type") -> list[tuple[str, str]]:
    """Parse QemuOpts text into (key, value) pairs in order; repeats are kept."""
    pairs: list[tuple[str, str]] = []
    for index, item in enumerate(_split_items(text)):
        if item == "":
            if index == 0 and implied_key is None:
                raise ConfigError("Invalid parameter ''")
            continue
        key, eq, value = item.partition("=")
        if not eq:
            if index == 0 and implied_key is not None:
                pairs.append((implied_key, item))
                continue
            pairs.append((item, "on"))
            continue
        if key == "":
            raise ConfigError(f"Invalid parameter '' (in '{item}')")
        pairs.append((key, value))
    return pairs


def parse_keyval(text: str, implied_key: str | None = "type") -> dict[str, Any]:
    """Parse keyval text (or a JSON object) into nested dictionaries of strings."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"JSON parse error: {exc.msg} at column {exc.colno}") from None
        if not isinstance(obj, dict):
            raise ConfigError("JSON value must be an object")
        return _stringify(obj)
    root: dict[str, Any] = {}
    for index, item in enumerate(_split_items(text)):
        if item == "":
            continue
        key, eq, value = item.partition("=")
        if not eq:
            if index == 0 and implied_key is not None:
                key, value = implied_key, item
            else:
                raise ConfigError(f"Expected '=' after parameter '{item}'")
        fragments = key.split(".")
        for frag in fragments:
            if not _KEY_FRAGMENT_RE.match(frag):
                raise ConfigError(f"Invalid parameter '{key}'")
        node = root
        for depth, frag in enumerate(fragments[:-1]):
            child = node.get(frag)
            if child is None:
                child = node[frag] = {}
            elif not isinstance(child, dict):
                prefix = ".".join(fragments[: depth + 1])
                raise ConfigError(f"Parameters '{prefix}.*' conflict with parameter '{prefix}'")
            node = child
        last = fragments[-1]
        if isinstance(node.get(last), dict):
            raise ConfigError(f"Parameters '{key}.*' conflict with parameter '{key}'")
        node[last] = value
    return root


def _stringify(obj: dict[str, Any]) -> dict[str, Any]:
    """JSON scalars become the strings keyval would have produced, so one validator serves both."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out[key] = _stringify(value)
        elif isinstance(value, bool):
            out[key] = "on" if value else "off"
        elif isinstance(value, int | float | str):
            out[key] = str(value)
        else:
            raise ConfigError(f"Parameter '{key}' has an unsupported JSON type")
    return out


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Turn nested keyval dictionaries back into dotted keys (for error messages and checks)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, full + "."))
        else:
            flat[full] = value
    return flat


def check_id(value: str, what: str) -> str:
    """QEMU ids: a letter, then letters, digits, '-', '.', '_'."""
    if not _ID_RE.match(value):
        raise ConfigError(f"Parameter 'id' expects an identifier (got '{value}' for {what})")
    return value


def parse_bool(key: str, value: str) -> bool:
    word = value.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(f"Parameter '{key}' expects 'on' or 'off' (got '{value}')")


def parse_uint(key: str, value: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    """Integers as QEMU reads them (strtol base 0: decimal, 0x hex, 0 octal)."""
    try:
        number = int(value, 0) if not re.fullmatch(r"0[0-7]+", value) else int(value, 8)
    except ValueError:
        raise ConfigError(f"Parameter '{key}' expects a number (got '{value}')") from None
    if not lo <= number <= hi:
        raise ConfigError(f"Parameter '{key}' expects a value in {lo}..{hi} (got '{value}')")
    return number


def collect_netdev_opts(driver: str, pairs: list[tuple[str, str]], known: frozenset[str],
                        refused: frozenset[str] = frozenset()) -> dict[str, str]:
    """The QemuOpts pairs of ``-netdev DRIVER,...`` as a dict: each key known and given once, ``type=``
    (if given) the driver, ``id=`` present. ``refused`` are QEMU's keys vmlan does not support (a
    message that says so rather than "Invalid parameter")."""
    opts: dict[str, str] = {}
    for key, value in pairs:
        if key not in known:
            if key in refused:
                raise ConfigError(
                    f"Parameter '{key}' of netdev type '{driver}' is not supported by vmlan (got '{value}')"
                )
            raise ConfigError(f"Invalid parameter '{key}' for netdev type '{driver}'")
        if key in opts:
            raise ConfigError(f"Parameter '{key}' given more than once")
        opts[key] = value
    if opts.get("type", driver) != driver:
        raise ConfigError(f"Parameter 'type' does not accept value '{opts['type']}' (expected '{driver}')")
    if "id" not in opts:
        raise ConfigError("Parameter 'id' is missing")
    return opts
