"""The sidecar's REST API from a synchronous caller (the CLI): HTTP, problem+json errors, saved login."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

DEFAULT_API = "http://127.0.0.1:8081"
DEFAULT_TIMEOUT = 10.0
TOKEN_FILE = "token"


class ApiError(Exception):
    """A call to the sidecar failed; `status` is the HTTP status, 0 when none arrived."""

    status = 0

    def __init__(self, message: str, *, status: int | None = None, title: str = "",
                 detail: str = ""):
        super().__init__(message)
        if status is not None:
            self.status = status
        self.title = title
        self.detail = detail


class SidecarUnreachable(ApiError):
    """No HTTP reply: connection refused, unknown host, timeout, TLS failure."""


class NotAuthenticated(ApiError):
    """401: no token, a bad or expired token, or a wrong password at login."""

    status = 401


class Forbidden(ApiError):
    """403: the token's role may not do this."""

    status = 403


class NotFound(ApiError):
    """404: no such shard, table, user or endpoint."""

    status = 404


class Conflict(ApiError):
    """409: the change contradicts the current state (e.g. removing a shard that owns ranges)."""

    status = 409


_BY_STATUS: dict[int, type[ApiError]] = {
    c.status: c for c in (NotAuthenticated, Forbidden, NotFound, Conflict)
}


def check_api_url(url: str) -> str:
    """The sidecar base URL without a trailing slash; ValueError unless it is http(s)://host."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError:
        raise ValueError(f"{url!r} has a bad port") from None
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r} must not have a query or fragment")
    return url.strip().rstrip("/")


def path(*segments: str) -> str:
    """An API path from literal parts and names, each name percent-encoded as one segment."""
    return "/".join(quote(s, safe="") if i else s for i, s in enumerate(segments))


class RestClient:
    """Synchronous JSON calls to one sidecar, with an optional bearer token."""

    def __init__(self, base_url: str, token: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT, ca_file: str | None = None):
        self.base_url = check_api_url(base_url)
        self.token = token
        self.timeout = timeout
        self._ssl = ssl.create_default_context(cafile=ca_file) if ca_file else None

    def get(self, api_path: str, query: dict | None = None):
        return self.request("GET", api_path, query=query)

    def post(self, api_path: str, body: dict):
        return self.request("POST", api_path, body)

    def put(self, api_path: str, body: dict):
        return self.request("PUT", api_path, body)

    def patch(self, api_path: str, body: dict):
        return self.request("PATCH", api_path, body)

    def delete(self, api_path: str):
        return self.request("DELETE", api_path)

    def login(self, user: str, password: str) -> dict:
        """POST /api/v1/auth/login: {token, expires_at, role}; NotAuthenticated if refused."""
        reply = self.post("/api/v1/auth/login", {"username": user, "password": password})
        if not isinstance(reply, dict) or not isinstance(reply.get("token"), str):
            raise ApiError("the sidecar's login reply carries no token")
        return reply

    def request(self, method: str, api_path: str, body: dict | None = None, *,
                query: dict | None = None, accept_status: tuple[int, ...] = ()):
        """Send one request; the decoded JSON reply (None if empty), or an ApiError.

        Replies with a status in `accept_status` are returned like 2xx ones (e.g. a 503
        health report whose body says what is wrong).
        """
        url = self.base_url + api_path
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        headers = {"Accept": "application/json, application/problem+json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
                return _decode(resp.status, resp.headers.get("Content-Type", ""), resp.read())
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            if exc.code in accept_status:
                return _decode(exc.code, exc.headers.get("Content-Type", ""), payload)
            raise _error(method, api_path, exc.code, exc.reason, payload) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:
            # Timeouts while reading, resets, a peer that closed without a reply.
            raise self._unreachable(exc) from None

    def _unreachable(self, reason) -> SidecarUnreachable:
        if isinstance(reason, ssl.SSLCertVerificationError):
            text = f"TLS certificate not trusted ({reason.verify_message})"
        elif isinstance(reason, OSError) and reason.strerror:
            text = reason.strerror.lower()
        elif isinstance(reason, TimeoutError | http.client.RemoteDisconnected) or not str(reason):
            text = "timed out" if isinstance(reason, TimeoutError) else "no reply"
        else:
            text = str(reason)
        return SidecarUnreachable(f"cannot reach the pgshard sidecar at {self.base_url}: {text}")


def _decode(status: int, content_type: str, payload: bytes):
    if status == 204 or not payload.strip():
        return None
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ApiError(f"the sidecar replied {status} with a body that is not JSON "
                       f"({content_type or 'no Content-Type'})", status=status) from None


def _error(method: str, api_path: str, status: int, reason: str, payload: bytes) -> ApiError:
    """The ApiError for an error reply, worded from its problem+json body when it has one."""
    title, detail = reason or http.client.responses.get(status, ""), ""
    try:
        problem = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        problem = None
    if isinstance(problem, dict):
        title = str(problem.get("title") or title)
        detail = str(problem.get("detail") or "")
    elif payload.strip() and status != 404:
        detail = payload.decode("utf-8", "replace").strip()
    detail = " ".join(detail.split())[:300]  # one line, whatever the server sent
    if status == 404 and not detail:
        detail = f"{method} {api_path} not found"
    message = f"{status} {title}" + (f": {detail}" if detail else "")
    cls = _BY_STATUS.get(status, ApiError)
    return cls(message, status=status, title=title, detail=detail)


@dataclass(frozen=True)
class SavedLogin:
    """What `pgshard login` keeps: the sidecar URL and the token it issued."""

    api: str
    token: str
    user: str = ""
    role: str = ""
    expires_at: str | int | float | None = None


def config_dir() -> Path:
    """$PGSHARD_CONFIG_DIR, else ~/.config/pgshard."""
    override = os.environ.get("PGSHARD_CONFIG_DIR")
    return Path(override) if override else Path.home() / ".config" / "pgshard"


def save_login(login: SavedLogin, directory: Path | None = None) -> Path:
    """Write the token file, readable by its owner only (0600, directory 0700)."""
    directory = directory or config_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = directory / TOKEN_FILE
    tmp = directory / f".{TOKEN_FILE}.{os.getpid()}"
    # Created 0600 from the start: the token is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), 0o600)
            json.dump(asdict(login), fh)
            fh.write("\n")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def load_login(directory: Path | None = None) -> SavedLogin | None:
    """The saved login, or None if there is none or it is unreadable."""
    try:
        data = json.loads(((directory or config_dir()) / TOKEN_FILE).read_text())
        return SavedLogin(api=check_api_url(data["api"]), token=str(data["token"]),
                          user=str(data.get("user", "")), role=str(data.get("role", "")),
                          expires_at=data.get("expires_at"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def forget_login(directory: Path | None = None) -> bool:
    """Delete the saved token; whether there was one."""
    target = (directory or config_dir()) / TOKEN_FILE
    try:
        target.unlink()
    except FileNotFoundError:
        return False
    return True
