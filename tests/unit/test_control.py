"""The control plane's pure parts: request validation, passwords, tokens, RBAC table, the
OpenAPI document, DSN redaction, /v1/execute value conversion, [sidecar] settings."""

from __future__ import annotations

import datetime
import decimal
import time
import uuid
from types import SimpleNamespace

import jwt
import pytest

from pgshard.config import ConfigError, config_from_dict
from pgshard.control.auth import (
    PERMISSIONS,
    ROLES,
    TokenIssuer,
    allowed,
    bearer_token,
    hash_password,
    verify_password,
)
from pgshard.control.catalog_ops import redact_dsn
from pgshard.control.errors import BadRequest, Unauthorized
from pgshard.control.execute import _coerce, to_json_value
from pgshard.control.openapi import SCHEMAS, build_document
from pgshard.control.routes import ROUTES
from pgshard.control.validation import SchemaError, validate


@pytest.mark.parametrize("body,ok", [
    ({"name": "s1", "primary": "postgresql://u:p@h:5432/db"}, True),
    ({"name": "s1", "primary": "postgresql://u@h/db", "replicas": []}, True),
    ({"name": "s1"}, False),
    ({"name": "s1", "primary": "postgresql://u@h/db", "extra": True}, False),
    ({"name": "s 1", "primary": "postgresql://u@h/db"}, False),
    ({"name": "s1\n", "primary": "postgresql://u@h/db"}, False),
    ({"name": "s1", "primary": "http://h"}, False),
    ({"name": "s1", "primary": "postgresql://u@h/db", "replicas": [1]}, False),
    (["s1"], False),
    (None, False),
])
def test_shard_create_schema(body, ok):
    if ok:
        validate(body, SCHEMAS["ShardCreate"])
    else:
        with pytest.raises(SchemaError):
            validate(body, SCHEMAS["ShardCreate"])


def test_execute_schema_types():
    schema = SCHEMAS["Execute"]
    for key in ("k", 42, None):
        validate({"query": "SELECT 1", "shard_key": key, "params": [1, "a", None, [1]]}, schema)
    for bad in ({"query": "x", "shard_key": True}, {"query": "x", "shard_key": 1.5},
                {"query": "x\x00"}, {"query": ""}, {"query": "x", "consistency": "strongest"},
                {"query": "x", "params": {}}):
        with pytest.raises(SchemaError):
            validate(bad, schema)
    with pytest.raises(SchemaError) as err:
        validate({"name": "x", "password": "longenough", "role": "admin", "x": 1},
                 SCHEMAS["UserCreate"])
    assert err.value.path == "$.x"


def test_password_hashes_are_salted_and_verify():
    a, b = hash_password("s3cret-pw"), hash_password("s3cret-pw")
    assert a != b and "s3cret" not in a and a.startswith("scrypt$")
    assert verify_password("s3cret-pw", a) and verify_password("s3cret-pw", b)
    assert not verify_password("s3cret-px", a)
    assert not verify_password("s3cret-pw", "garbage") and not verify_password("x", "")


def test_tokens():
    issuer = TokenIssuer(b"k" * 32, ttl=60)
    token, exp = issuer.issue("alice", "viewer")
    assert exp - time.time() == pytest.approx(60, abs=2)
    assert issuer.verify(token).name == "alice" and issuer.verify(token).role == "viewer"
    with pytest.raises(Unauthorized):
        TokenIssuer(b"x" * 32, ttl=60).verify(token)
    expired = jwt.encode({"sub": "a", "role": "admin", "iat": 1, "exp": 2, "iss": "pgshard"},
                         b"k" * 32, algorithm="HS256")
    with pytest.raises(Unauthorized, match="expired"):
        issuer.verify(expired)
    none_alg = jwt.encode({"sub": "a", "role": "admin", "iat": 1, "exp": 2**31,
                           "iss": "pgshard"}, None, algorithm="none")
    with pytest.raises(Unauthorized):
        issuer.verify(none_alg)
    bad_role = jwt.encode({"sub": "a", "role": "root", "iat": 1, "exp": 2**31,
                           "iss": "pgshard"}, b"k" * 32, algorithm="HS256")
    with pytest.raises(Unauthorized):
        issuer.verify(bad_role)
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    for header in (None, "", "Basic abc", "Bearer"):
        with pytest.raises(Unauthorized):
            bearer_token(header)


def test_rbac_table():
    assert all(allowed("admin", p) for p in PERMISSIONS)
    assert [p for p in PERMISSIONS if allowed("app", p)] == ["execute"]
    assert not allowed("operator", "users:admin") and allowed("operator", "catalog:write")
    assert not allowed("viewer", "catalog:write") and allowed("viewer", "catalog:read")
    assert set().union(*PERMISSIONS.values()) == set(ROLES)


def test_openapi_document_covers_the_route_table():
    doc = build_document(ROUTES)
    assert doc["openapi"] == "3.1.0"
    for r in ROUTES:
        assert r.permission is None or r.permission in PERMISSIONS
        op = doc["paths"][r.path][r.method.lower()]
        assert str(r.success) in op["responses"]
        if r.schema:
            assert r.schema in SCHEMAS and {"400", "413", "415"} <= set(op["responses"])
        if r.permission:
            assert {"401", "403"} <= set(op["responses"]) and op["security"]
        if r.action:
            assert r.method != "GET"
    ops = [op["operationId"] for path in doc["paths"].values() for op in path.values()]
    assert len(ops) == len(set(ops)) == len(ROUTES)
    assert all(s.get("additionalProperties") is False for s in SCHEMAS.values())


def test_redact_dsn():
    assert redact_dsn("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_dsn("postgresql://u@h/db") == "postgresql://u@h/db"
    assert "secret" not in redact_dsn("postgresql://u:sec@ret@h/db")


def _t(name, kind="scalar", element=None):
    return SimpleNamespace(name=name, kind=kind, element_type=element)


def test_parameter_coercion():
    assert _coerce("42", _t("int4"), 1) == 42 and _coerce(42.0, _t("int8"), 1) == 42
    assert _coerce("1.50", _t("numeric"), 1) == decimal.Decimal("1.50")
    assert _coerce(3, _t("text"), 1) == "3" and _coerce({"a": 1}, _t("jsonb"), 1) == '{"a": 1}'
    assert _coerce("t", _t("bool"), 1) is True
    assert _coerce("2024-01-02T03:04:05", _t("timestamptz"), 1).tzinfo is not None
    assert _coerce(["1", 2], _t("_int4", "array", _t("int4")), 1) == [1, 2]
    assert _coerce("\\x0aff", _t("bytea"), 1) == b"\n\xff"
    assert _coerce(None, _t("int4"), 1) is None
    for value, typ in (("x", "int4"), (True, "int4"), (1.5, "int2"), ("nope", "uuid"),
                       ("2024-13-01", "date"), ("maybe", "bool")):
        with pytest.raises(BadRequest, match=r"parameter \$3"):
            _coerce(value, _t(typ), 3)


def test_result_values_as_json():
    u = uuid.uuid4()
    assert to_json_value(decimal.Decimal("1.10")) == "1.10"
    assert to_json_value(datetime.date(2024, 1, 2)) == "2024-01-02"
    assert to_json_value(b"\x01\x02") == "\\x0102" and to_json_value(u) == str(u)
    assert to_json_value(float("nan")) == "nan" and to_json_value([1, (2, None)]) == [1, [2, None]]
    assert to_json_value(datetime.timedelta(seconds=90)) == 90.0


def test_sidecar_settings_are_validated():
    cfg = config_from_dict({"sidecar": {"cors_origins": ["https://a"], "token_ttl": 60},
                            "lease_ttl": 3, "node_id": "n1"})
    assert cfg.sidecar.cors_origins == ("https://a",) and cfg.lease_ttl == 3
    for bad in ({"sidecar": {"jwt": "x"}}, {"sidecar": {"max_body_size": 10}},
                {"sidecar": {"tls_cert": "c"}}, {"lease_ttl": 0}, {"sidecar": {"token_ttl": 0}}):
        with pytest.raises(ConfigError):
            config_from_dict(bad)
