"""The OpenAPI 3.1 document of the REST API, built from the route table, and the strict
request schemas that both the document publishes and the handlers validate against."""

from __future__ import annotations

from pgshard import __version__

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
IDENT = r"[A-Za-z_][A-Za-z0-9_$]{0,62}"
TABLE = rf"^{IDENT}(\.{IDENT})?$"
COLUMN = rf"^{IDENT}$"
NO_NUL = "^[^\\u0000]*$"
DSN = {"type": "string", "minLength": 1, "maxLength": 2048, "pattern": r"^postgres(ql)?://.+$",
       "description": "postgresql://user:password@host:port/database"}

SCHEMAS: dict[str, dict] = {
    "Login": {
        "type": "object", "additionalProperties": False, "required": ["username", "password"],
        "properties": {"username": {"type": "string", "minLength": 1, "maxLength": 128},
                       "password": {"type": "string", "minLength": 1, "maxLength": 1024}},
    },
    "ShardCreate": {
        "type": "object", "additionalProperties": False, "required": ["name", "primary"],
        "properties": {"name": {"type": "string", "pattern": NAME},
                       "primary": DSN,
                       "replicas": {"type": "array", "items": DSN, "maxItems": 16}},
    },
    "ShardPatch": {
        "type": "object", "additionalProperties": False, "minProperties": 1,
        "properties": {"primary": DSN,
                       "replicas": {"type": "array", "items": DSN, "maxItems": 16},
                       "status": {"type": "string", "enum": ["active", "draining", "fenced"]},
                       "weight": {"type": "integer", "minimum": 0, "maximum": 1000}},
    },
    "TablePut": {
        "type": "object", "additionalProperties": False, "required": ["shard_key"],
        "properties": {"shard_key": {"type": "string", "pattern": COLUMN}},
    },
    "UserCreate": {
        "type": "object", "additionalProperties": False,
        "required": ["name", "password", "role"],
        "properties": {"name": {"type": "string", "pattern": NAME},
                       "password": {"type": "string", "minLength": 8, "maxLength": 1024},
                       "role": {"type": "string", "enum": ["admin", "operator", "viewer", "app"]}},
    },
    "Execute": {
        "type": "object", "additionalProperties": False, "required": ["query"],
        "properties": {
            "query": {"type": "string", "minLength": 1, "maxLength": 1_000_000,
                      "pattern": NO_NUL},
            "params": {"type": "array", "maxItems": 10_000},
            "shard_key": {"type": ["string", "integer", "null"], "maxLength": 1024,
                          "pattern": NO_NUL},
            "consistency": {"type": "string", "enum": ["strong", "eventual"]},
        },
    },
}

PROBLEM = {
    "type": "object", "required": ["type", "title", "status", "detail"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                   "status": {"type": "integer"}, "detail": {"type": "string"}},
}

_STATUS_TEXT = {200: "OK", 201: "Created", 202: "Accepted: the job runs in the background", 400: "Bad request: malformed JSON, unknown fields "
                "or wrong types", 401: "Missing, invalid or expired token", 403: "The role "
                "lacks the permission", 404: "Not found", 409: "Conflict", 413: "Body too large",
                415: "Content-Type is not application/json", 429: "Too many failed logins "
                "(for this user or from this address); see the Retry-After header", 422: "An endpoint did not answer, "
                "is not what it should be, or a table or column is missing on a shard", 503: "The metadata store or the proxy is "
                "unavailable", 504: "The statement timed out"}


def build_document(routes) -> dict:
    """The OpenAPI document for `routes` (routes.Route objects)."""
    paths: dict[str, dict] = {}
    for route in routes:
        if route.hidden:
            continue
        op: dict = {"operationId": route.operation, "summary": route.summary,
                    "tags": [route.tag]}
        params = []
        for pname, pattern in route.path_params.items():
            params.append({"name": pname, "in": "path", "required": True,
                           "schema": {"type": "string", "pattern": pattern}})
        for pname, schema in route.query_params.items():
            params.append({"name": pname, "in": "query", "required": False, "schema": schema})
        if params:
            op["parameters"] = params
        if route.schema:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{route.schema}"}}}}
        codes = {route.success}
        if route.permission:
            op["security"] = [{"bearerAuth": []}]
            codes |= {401, 403}
        else:
            op["security"] = []
        if route.schema:
            codes |= {400, 413, 415}
        codes |= set(route.statuses)
        responses = {}
        for code in sorted(codes):
            if code < 300:
                responses[str(code)] = {"description": _STATUS_TEXT[code],
                                        "content": {route.content_type: {"schema": {}}}}
            else:
                responses[str(code)] = {"description": _STATUS_TEXT[code], "content": {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        if "429" in responses:
            responses["429"]["headers"] = {"Retry-After": {
                "description": "Seconds to wait before trying again",
                "schema": {"type": "integer", "minimum": 1}}}
        op["responses"] = responses
        if route.permission:
            op["description"] = f"Requires the {route.permission} permission."
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "pgshard control plane", "version": __version__,
                 "description": "Catalog, shards, sharded tables, users, audit and a REST "
                 "query path for the pgshard PostgreSQL sharding proxy."},
        "paths": paths,
        "components": {
            "schemas": {**SCHEMAS, "Problem": PROBLEM},
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "bearerFormat": "JWT"}},
        },
    }
