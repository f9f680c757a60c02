"""What each fault takes, for people: parameters with their types, units, defaults and help text
(read from the fault dataclass and the ``Args:`` section of its docstring), and the parsing of
``--kebab-case value`` options into those parameters (``meshlab fault list`` / ``inject``).

A field whose docstring says it is *filled by inject* or *generated* is state, not a parameter:
it is neither listed nor accepted. Units come from the name's suffix, the project's convention
(``_s`` seconds, ``_ms`` milliseconds, ``_us`` microseconds, ``_pct`` percent, ``_mbit``
Mbit/s, ``_bytes`` bytes, ``_m`` millicores of CPU, as Kubernetes writes ``100m``).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from meshlab.errors import ConfigError
from meshlab.faults.registry import FAULTS

UNITS = {"_s": "s", "_ms": "ms", "_us": "µs", "_pct": "%", "_mbit": "Mbit/s", "_bytes": "bytes",
         "_kbytes": "KiB", "_m": "m"}
_HIDDEN = re.compile(r"^filled by inject|\(generated\b|^generated\b", re.IGNORECASE)
_ARG = re.compile(r"^ {8}(\w+): (.*)$")


@dataclass(frozen=True)
class ParamInfo:
    """One parameter of a fault.

    Attributes:
        name: the dataclass field, e.g. ``delay_ms``.
        option: the CLI option, e.g. ``--delay-ms``.
        type_name: ``str``, ``int``, ``float``, ``bool`` or ``dict`` (``k=v,k=v`` on the CLI).
        optional: None is allowed (``X | None``).
        required: no default.
        default: the default (None when required or None).
        unit: from the name's suffix (:data:`UNITS`), else ``""``.
        doc: the help text from the docstring's ``Args:`` section.
    """

    name: str
    option: str
    type_name: str
    optional: bool
    required: bool
    default: Any
    unit: str
    doc: str


def _arg_docs(cls: type) -> dict[str, str]:
    docs: dict[str, str] = {}
    current = None
    in_args = False
    for line in (cls.__doc__ or "").splitlines():
        if line.strip() == "Args:":
            in_args = True
            continue
        if in_args and line.strip() and not line.startswith(" " * 8):
            in_args = False  # the next section (Raises:, Attributes:)
        if not in_args:
            continue
        m = _ARG.match(line)
        if m:
            current = m.group(1)
            docs[current] = m.group(2).strip()
        elif current and line.strip():
            docs[current] += " " + line.strip()
    return docs


def _type_of(hint: Any) -> tuple[str, bool]:
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = typing.get_args(hint) if union else ()
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    origin = typing.get_origin(base) or base
    for kind in (bool, int, float, str, dict, list):
        if origin is kind:
            return kind.__name__, optional
    return "str", optional


def params_of(kind: str) -> list[ParamInfo]:
    """The parameters of fault ``kind`` (registry key), in declaration order.

    Raises:
        ConfigError: an unknown kind (the known ones listed).
    """
    if kind not in FAULTS:
        raise ConfigError(f"unknown fault {kind!r} (known: {', '.join(sorted(FAULTS))})")
    cls = FAULTS[kind]
    hints = typing.get_type_hints(cls)
    docs = _arg_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        doc = docs.get(f.name, "")
        if _HIDDEN.search(doc):
            continue
        type_name, optional = _type_of(hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                   else None if f.default is dataclasses.MISSING else f.default)
        unit = next((u for suffix, u in UNITS.items() if f.name.endswith(suffix)), "")
        out.append(ParamInfo(f.name, "--" + f.name.replace("_", "-"), type_name, optional,
                             required, default, unit, doc))
    return out


_UNIT_TEXT = re.compile(r"^([-+0-9.eE]+)\s*(ms|us|µs|s|%|Mbit/s|mbit|bytes|KiB|m)$")


def _strip_unit(info: ParamInfo, text: str) -> str:
    """``"50ms"`` for a ``_ms`` parameter → ``"50"``; another unit is an error."""
    m = _UNIT_TEXT.match(text.strip())
    if not m or info.type_name not in ("int", "float"):
        return text
    unit = {"us": "µs", "mbit": "Mbit/s"}.get(m.group(2), m.group(2))
    if unit != info.unit:
        raise ConfigError(f"{info.option}: takes {info.unit or 'a plain number'}, got {text!r}")
    return m.group(1)


def _convert(info: ParamInfo, text: str) -> Any:
    if info.optional and text.lower() in ("none", "null"):
        return None
    text = _strip_unit(info, text)
    try:
        if info.type_name == "int":
            return int(text)
        if info.type_name == "float":
            return float(text)
        if info.type_name == "bool":
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if info.type_name == "dict":
            pairs = [p.split("=", 1) for p in text.split(",") if p]
            if any(len(p) != 2 for p in pairs):
                raise ValueError(text)
            return {k.strip(): int(v) if v.strip().lstrip("-").isdigit() else v.strip()
                    for k, v in pairs}
        if info.type_name == "list":
            return [int(p) if p.strip().isdigit() else p.strip() for p in text.split(",") if p]
    except ValueError:
        unit = f" in {info.unit}" if info.unit else ""
        raise ConfigError(f"{info.option}: expected {info.type_name}{unit}, got {text!r}"
                          ) from None
    return text


def parse_options(kind: str, args: list[str]) -> dict[str, Any]:
    """``["--delay-ms", "50", "--target=x"]`` → ``{"delay_ms": 50, "target": "x"}``.

    Raises:
        ConfigError: an unknown kind or option, a value of the wrong type or unit, a missing
            value or a missing required parameter (the option is named).
    """
    known = {p.option: p for p in params_of(kind)}
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        option, eq, value = arg.partition("=")
        if option not in known:
            hint = ", ".join(known) or "none"
            raise ConfigError(f"{option}: not a parameter of fault {kind!r} (its parameters: "
                              f"{hint})")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"{option}: needs a value")
            value, i = args[i + 1], i + 1
        info = known[option]
        out[info.name] = _convert(info, value)
        i += 1
    missing = [p.option for p in known.values() if p.required and p.name not in out]
    if missing:
        raise ConfigError(f"{missing[0]}: required by fault {kind!r}")
    return out


def describe(kind: str) -> str:
    """Lines for ``meshlab fault list``: the kind, its summary, then one line per parameter
    (option, type and unit, default or ``required``, help)."""
    cls = FAULTS[kind]
    summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    lines = [f"{kind}: {summary}"]
    for p in params_of(kind):
        what = p.type_name + (f" ({p.unit})" if p.unit else "")
        default = "required" if p.required else f"default {p.default!r}"
        lines.append(f"  {p.option:24} {what:16} {default:22} {p.doc}")
    return "\n".join(lines)
