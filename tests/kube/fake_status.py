"""The ``Status`` bodies of the in-test API server (:mod:`kube_fake_server`), shaped as
``k8s.io/apimachinery/pkg/api/errors`` builds them: every refusal is HTTP ``code`` with a
``{"kind": "Status", "status": "Failure", "reason", "message", "details", "code"}`` JSON body.

Each builder returns ``(http status, body)`` ready for the fake's router, except the exec ones
(:func:`exec_success`, :func:`exec_exit`, :func:`exec_internal_error`), which are the bodies
the kubelet writes on the exec error channel (channel 3) after the upgrade.
"""

from __future__ import annotations

from typing import Any

Answer = tuple[int, Any]
#: The message of a 404 for a path the server does not serve (a group, version or resource
#: not installed), ``NewGenericServerResponse(404, ...)``.
NOT_SERVED = "the server could not find the requested resource"


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None
           ) -> Answer:
    """A Failure ``Status`` with HTTP ``code`` (``details`` omitted when None)."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": message, "reason": reason}
    if details is not None:
        body["details"] = details
    body["code"] = code
    return code, body


def qualified(resource: str, group: str) -> str:
    """``GroupResource.String()``: ``pods``, ``statefulsets.apps``."""
    return f"{resource}.{group}" if group else resource


def _details(resource: str, group: str, name: str, **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name} if name else {}
    if group:
        out["group"] = group
    return {**out, "kind": resource, **more}


def not_found(resource: str, name: str, group: str = "") -> Answer:
    """404 NotFound for a named object (``pods "x" not found``)."""
    return status(404, "NotFound", f'{qualified(resource, group)} "{name}" not found',
                  _details(resource, group, name))


def not_served() -> Answer:
    """404 NotFound for a group/version/resource the server does not serve (a CRD not
    installed): the generic message and empty details."""
    return status(404, "NotFound", NOT_SERVED, {})


def already_exists(resource: str, name: str, group: str = "", terminating: bool = False
                   ) -> Answer:
    """409 AlreadyExists; the registry prefixes ``object is being deleted:`` when the existing
    object has a ``deletionTimestamp`` (its previous incarnation is still terminating)."""
    message = f'{qualified(resource, group)} "{name}" already exists'
    if terminating:
        message = f"object is being deleted: {message}"
    return status(409, "AlreadyExists", message, _details(resource, group, name))


def conflict(resource: str, name: str, why: str, group: str = "") -> Answer:
    """409 Conflict (``Operation cannot be fulfilled on <resource> "<name>": <why>``)."""
    return status(409, "Conflict", f'Operation cannot be fulfilled on {qualified(resource, group)}'
                                   f' "{name}": {why}', _details(resource, group, name))


def forbidden(resource: str, name: str, why: str, group: str = "",
              causes: list[dict[str, str]] | None = None) -> Answer:
    """403 Forbidden (``<resource> "<name>" is forbidden: <why>``; no name: ``<resource> is
    forbidden: <why>``), e.g. RBAC or the NamespaceLifecycle admission plugin."""
    who = f'{qualified(resource, group)} "{name}"' if name else qualified(resource, group)
    more = {"causes": causes} if causes else {}
    return status(403, "Forbidden", f"{who} is forbidden: {why}",
                  _details(resource, group, name, **more))


def bad_request(message: str) -> Answer:
    """400 BadRequest with ``message`` (e.g. ``container x is not valid for pod y``)."""
    return status(400, "BadRequest", message)


def field_error(field: str, kind: str, value: Any = None, detail: str = "") -> dict[str, str]:
    """One ``field.Error`` as a Status cause: ``kind`` is ``Invalid`` or ``Required``
    (``FieldValueInvalid`` / ``FieldValueRequired``); the message is the error's body."""
    if kind == "Required":
        body = f"Required value: {detail}" if detail else "Required value"
    else:
        shown = f'"{value}"' if isinstance(value, str) else str(value)
        body = f"Invalid value: {shown}: {detail}"
    return {"reason": f"FieldValue{kind}", "message": body, "field": field}


def invalid(kind: str, group: str, name: str, causes: list[dict[str, str]]) -> Answer:
    """422 Invalid: ``<Kind[.group]> "<name>" is invalid: <field>: <body>`` (several errors:
    ``[a, b]``), ``details.causes`` one per field error."""
    errors = [f"{c['field']}: {c['message']}" for c in causes]
    listed = errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"
    who = f"{kind}.{group}" if group else kind
    return status(422, "Invalid", f'{who} "{name}" is invalid: {listed}',
                  {"name": name, **({"group": group} if group else {}), "kind": kind,
                   "causes": causes})


def exec_success() -> dict[str, Any]:
    """The kubelet's channel-3 Status of a command that exited 0."""
    return {"metadata": {}, "status": "Success"}


def exec_exit(code: int) -> dict[str, Any]:
    """The kubelet's channel-3 Status of a non-zero exit: reason NonZeroExitCode, the code in
    an ``ExitCode`` cause."""
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: error executing command, "
                       f"exit code {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def exec_internal_error(error: str) -> dict[str, Any]:
    """The kubelet's channel-3 Status when the command could not run at all (not found, the
    container gone): ``NewInternalError``, reason InternalError, code 500, one cause carrying
    only the message — no ``ExitCode`` cause."""
    text = f"error executing command in container: {error}"
    return {"metadata": {}, "status": "Failure", "message": f"Internal error occurred: {text}",
            "reason": "InternalError", "details": {"causes": [{"message": text}]}, "code": 500}
