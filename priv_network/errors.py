"""The one error tree of priv_network.

Every error a user, a client or a peer can cause is a ``PrivNetworkError``: it
knows its HTTP status and a stable machine code, and its message is one line
meant for people. The HTTP middleware (``priv_network.middleware``) and the CLI
(``priv_network.cli``) are the only two places that turn these into responses
or exit codes; anything that is not a ``PrivNetworkError`` is a bug and becomes
a generic 500 / exit 1 with the traceback only in the log.

    PrivNetworkError (500, internal)
    ├── BadRequest (400, bad_request)
    │   └── InvalidInput (400, invalid_input)
    ├── Unauthorized (401, unauthorized)
    ├── Forbidden (403, forbidden)
    ├── NotFound (404, not_found)
    ├── Conflict (409, conflict)
    ├── RangeNotSatisfiable (416, range_not_satisfiable)
    ├── PayloadTooLarge (413, payload_too_large)
    ├── InsufficientStorage (507, insufficient_storage)
    ├── ConfigError (500, config_error)
    ├── SchemaOutOfDate (503, schema_out_of_date)
    ├── DataFolderLocked (409, data_folder_locked)
    └── NodeUnreachable (503, node_unreachable)   # CLI: the node is not running
"""

from __future__ import annotations


class PrivNetworkError(Exception):
    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        # Messages are one line by contract: a newline would break CLI output
        # and log lines.
        super().__init__(" ".join(message.split()))
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)

    def to_json(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(PrivNetworkError):
    status = 400
    code = "bad_request"


class InvalidInput(BadRequest):
    code = "invalid_input"


class Unauthorized(PrivNetworkError):
    status = 401
    code = "unauthorized"


class Forbidden(PrivNetworkError):
    status = 403
    code = "forbidden"


class NotFound(PrivNetworkError):
    status = 404
    code = "not_found"


class Conflict(PrivNetworkError):
    status = 409
    code = "conflict"


class PayloadTooLarge(PrivNetworkError):
    status = 413
    code = "payload_too_large"


class RangeNotSatisfiable(PrivNetworkError):
    status = 416
    code = "range_not_satisfiable"


class InsufficientStorage(PrivNetworkError):
    status = 507
    code = "insufficient_storage"


class ConfigError(PrivNetworkError):
    status = 500
    code = "config_error"


class SchemaOutOfDate(PrivNetworkError):
    status = 503
    code = "schema_out_of_date"


class DataFolderLocked(PrivNetworkError):
    status = 409
    code = "data_folder_locked"


class NodeUnreachable(PrivNetworkError):
    status = 503
    code = "node_unreachable"
