"""One YAML document of a manifests folder, as the loader and the Istio parsers read it.

:class:`Document` is what :func:`meshlab.manifests.loader.read_documents` yields and what every
``parse_*`` function of :mod:`meshlab.manifests.istio_resources` and
:mod:`meshlab.manifests.istio_envoy_filter` takes. It depends on nothing of the package, so the
loader and the parsers both import it without importing each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshlab.errors import ManifestError


class Document:
    """One YAML document with its file and a readable ``Kind/name`` for error messages.

    Args:
        path: the manifest file the document came from.
        body: the parsed document, a mapping (``{"apiVersion": ..., "kind": ..., "metadata":
            {...}, "spec": {...}}``); kept as is in :attr:`body`.

    Attributes:
        path: as given.
        body: as given.
        kind: ``body["kind"]`` as a string, ``""`` when absent.
        name: ``body["metadata"]["name"]`` as a string, ``"?"`` when absent.
    """

    def __init__(self, path: Path, body: dict[str, Any]) -> None:
        self.path = path
        self.body = body
        self.kind = str(body.get("kind", ""))
        meta = body.get("metadata")  # not a mapping: the schema check names the field
        self.name = str(meta.get("name", "?")) if isinstance(meta, dict) else "?"

    def fail(self, field: str, message: str) -> ManifestError:
        """A ManifestError for ``field`` (dotted, relative to the document), to raise.

        Args:
            field: e.g. ``"spec.trafficPolicy.connectionPool.tcp.maxConnections"``.
            message: the problem, e.g. ``"missing required field"``.

        Returns:
            ``ManifestError(path, "<Kind>/<name>.<field>", message)``, which reads
            ``<file>: <Kind>/<name>.<field>: <message>``.
        """
        return ManifestError(str(self.path), f"{self.kind}/{self.name}.{field}", message)

    def get(self, dotted: str, default: Any = ...,
            kind: type | tuple[type, ...] | None = None) -> Any:
        """The value at a dotted path of :attr:`body` (``"spec.template.metadata.labels"``).

        Args:
            dotted: keys of nested mappings joined by dots (no list indexes).
            default: returned when the path is missing; ``...`` (the default) makes the field
                required.
            kind: when given, the type (or tuple of types) the found value must have; a
                returned ``default`` is not checked.

        Returns:
            The value found, or ``default``.

        Raises:
            ManifestError: the path is missing and there is no default ("missing required
                field"), or the value is not of ``kind`` ("expected int, got str").
        """
        node: Any = self.body
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is ...:
                    raise self.fail(dotted, "missing required field")
                return default
            node = node[part]
        if kind is not None and not isinstance(node, kind):
            raise self.fail(dotted, f"expected {_type_name(kind)}, got {type(node).__name__}")
        return node


def _type_name(kind: type | tuple[type, ...]) -> str:
    """``"int"`` for ``int``, ``"int or str"`` for ``(int, str)``: the type names of an error."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)
