"""JSON-RPC 2.0 error codes of the query API (QUERY_API.md, "Errors")."""
from __future__ import annotations

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
TRACE_NOT_FOUND = -32000
TOO_MANY_REQUESTS = -32001
TOO_MANY_CONNECTIONS = -32002

MESSAGES = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
    TRACE_NOT_FOUND: "Trace not found",
    TOO_MANY_REQUESTS: "Too many requests",
    TOO_MANY_CONNECTIONS: "Too many concurrent connections",
}

# metric label of each code
OUTCOMES = {
    PARSE_ERROR: "parse_error", INVALID_REQUEST: "invalid_request",
    METHOD_NOT_FOUND: "method_not_found", INVALID_PARAMS: "invalid_params",
    INTERNAL_ERROR: "internal_error", TRACE_NOT_FOUND: "trace_not_found",
    TOO_MANY_REQUESTS: "rate_limited", TOO_MANY_CONNECTIONS: "connection_limited",
}


class RpcError(Exception):
    def __init__(self, code: int, data=None):
        super().__init__(f"{MESSAGES.get(code, 'Server error')}: {data}")
        self.code = code
        self.data = data

    def to_dict(self) -> dict:
        err = {"code": self.code, "message": MESSAGES.get(self.code, "Server error")}
        if self.data is not None:
            err["data"] = self.data
        return err


def invalid_params(why: str) -> RpcError:
    return RpcError(INVALID_PARAMS, why)
