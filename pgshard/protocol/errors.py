"""Typed errors that carry a SQLSTATE: one class per code, looked up by code."""

from __future__ import annotations

_REGISTRY: dict[str, type[PgError]] = {}


class PgError(Exception):
    """An error the proxy reports to a client as an ErrorResponse."""

    sqlstate = "XX000"
    severity = "ERROR"

    def __init_subclass__(cls, code: str | None = None, **kw):
        super().__init_subclass__(**kw)
        if code:
            cls.sqlstate = code
            _REGISTRY.setdefault(code, cls)

    def __init__(self, message: str, *, hint: str | None = None, detail: str | None = None,
                 sqlstate: str | None = None, severity: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.detail = detail
        if sqlstate:
            self.sqlstate = sqlstate
        if severity:
            self.severity = severity

    @property
    def fatal(self) -> bool:
        return self.severity in ("FATAL", "PANIC")


def lookup(sqlstate: str) -> type[PgError]:
    """The class registered for a SQLSTATE, else for its two-character class, else PgError."""
    return _REGISTRY.get(sqlstate) or _REGISTRY.get(sqlstate[:2] + "000") or PgError


def from_fields(fields: dict[str, str], prefix: str = "", detail: str | None = None) -> PgError:
    """A server's ErrorResponse (its decoded fields) as the typed error relayed to a client:
    the same SQLSTATE, severity, hint and detail (detail: a replacement), the message after
    prefix (e.g. the shard's name)."""
    code = fields.get("C", "XX000")
    return lookup(code)(prefix + fields.get("M", ""), hint=fields.get("H"),
                        detail=detail if detail is not None else fields.get("D"),
                        sqlstate=code, severity=fields.get("V", fields.get("S", "ERROR")))


class ProtocolViolation(PgError, code="08P01"):
    """The peer sent bytes that are not the PostgreSQL protocol (RemoteProtocolError)."""

    severity = "FATAL"


class MalformedMessage(ProtocolViolation):
    """A well-framed message whose body does not decode (PostgreSQL's pq_getmsg* errors):
    an ERROR, not FATAL, so the session goes on at the next Sync as PostgreSQL's does."""

    severity = "ERROR"


class CharacterNotInRepertoire(PgError, code="22021"):
    """Bytes that are not valid UTF-8 (PostgreSQL: invalid byte sequence for encoding)."""


class InvalidBinaryRepresentation(PgError, code="22P03"):
    pass


class ConnectionFailure(PgError, code="08006"):
    pass


class ConnectionException(PgError, code="08000"):
    pass


class CannotConnectNow(PgError, code="57P03"):
    pass


class AdminShutdown(PgError, code="57P01"):
    pass


class QueryCanceled(PgError, code="57014"):
    pass


class InvalidPassword(PgError, code="28P01"):
    severity = "FATAL"


class InvalidAuthorization(PgError, code="28000"):
    severity = "FATAL"


class InvalidCatalogName(PgError, code="3D000"):
    severity = "FATAL"


class TooManyConnections(PgError, code="53300"):
    severity = "FATAL"


class FeatureNotSupported(PgError, code="0A000"):
    pass


class InvalidParameterValue(PgError, code="22023"):
    pass


class InvalidTextRepresentation(PgError, code="22P02"):
    pass


class SyntaxError_(PgError, code="42601"):
    pass


class UndefinedObject(PgError, code="42704"):
    pass


class DuplicatePreparedStatement(PgError, code="42P05"):
    pass


class InvalidSqlStatementName(PgError, code="26000"):
    pass


class ActiveSqlTransaction(PgError, code="25001"):
    pass


class NoActiveSqlTransaction(PgError, code="25P01"):
    pass


class InFailedSqlTransaction(PgError, code="25P02"):
    pass


class ObjectNotInPrerequisiteState(PgError, code="55000"):
    pass


class InternalError(PgError, code="XX000"):
    pass


class TransactionRollback(PgError, code="40000"):
    pass


class InsufficientPrivilege(PgError, code="42501"):
    pass


class TransactionResolutionUnknown(PgError, code="08007"):
    pass


class SystemError_(PgError, code="58000"):
    pass


class InvalidCursorName(PgError, code="34000"):
    pass


class IdleSessionTimeout(PgError, code="57P05"):
    pass


class IdleInTransactionSessionTimeout(PgError, code="25P03"):
    pass


class ConfigFileError(PgError, code="F0000"):
    pass
