"""The API key of ``gpt2clf serve``: where it comes from, what it guards, and the rule that no
server listens beyond loopback without one by accident.

Data flow::

    GPT2CLF_API_KEY, or the file of --api-key-file (read_api_key; checked: printable ASCII, no spaces)
    --> create_app(api_key=...) --> ApiKeyMiddleware: a request to any path outside OPEN_PATHS
        must carry "Authorization: Bearer <key>", compared in constant time (hmac.compare_digest
        on bytes, so a key of another length is simply wrong) --> else 401, the JSON error body,
        "WWW-Authenticate: Bearer ..."
    serve(host=...) and running_in_thread(host=...) --> check_exposure: a host that is not
        loopback, without a key, is refused (ExposedServerError) before anything listens;
        allow_unauthenticated serves it anyway, with one SecurityWarning.

Guarantees:

* Open without the key: ``/healthz`` and ``/readyz`` (orchestrators probe them), the page ``/``
  and ``/static/...`` (it must load to ask for the key), and the OpenAPI schema and its viewers
  (``/openapi.json``, ``/docs``, ``/redoc``: generated clients read it; with a key it lists no
  labels). Everything else needs the key: ``/v1/...``, ``/metrics`` (request counts and
  latencies say how the service is used) and any unknown path (401, not 404). It is an
  allowlist, so a route added later is closed unless it is added here.
* The key is never logged, never put in an error message, a metric or a response: it lives
  in one :class:`ApiKey`, whose ``repr`` hides it, held by the middleware (not ``app.state``,
  not ``ServeSettings``, whose fields ``/v1/model`` shows); messages about a bad key name where
  it came from, never what it is.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gpt2clf.config import API_KEY_ENV
from gpt2clf.errors import ConfigError, SecurityWarning
from gpt2clf.serve.http_errors import error_response

__all__ = ["API_KEY_ENV", "OPEN_PATHS", "ApiKey", "ApiKeyMiddleware", "ExposedServerError", "check_api_key",
           "check_exposure", "declare_bearer_auth", "is_loopback", "is_open_path", "read_api_key"]

# Paths anyone may request, key or not (see the module docstring for why each is open).
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
OPEN_PREFIXES = ("/static/",)
SECURITY_SCHEME = "bearerAuth"
REALM = 'Bearer realm="gpt2clf"'


class ExposedServerError(ConfigError):
    """Serving on an address other than loopback without an API key, and without allow_unauthenticated."""


# ---------------------------------------------------------------------------------------
# where the key comes from
# ---------------------------------------------------------------------------------------
def check_api_key(key: str, source: str) -> str:
    """``key`` if it can be an API key (non-empty printable ASCII without spaces: it travels in an
    HTTP header); else a :class:`ConfigError` naming ``source``, never the key."""
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{source} is empty; an API key needs at least one character")
    if not all("!" <= char <= "~" for char in key):
        raise ConfigError(f"{source} holds characters an HTTP header cannot carry: use printable ASCII "
                          "without spaces (e.g. from 'openssl rand -hex 32')")
    return key


def read_api_key(api_key_file: str | Path | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The API key: the content of ``api_key_file`` if given (surrounding whitespace, such as the final
    newline, ignored), else ``GPT2CLF_API_KEY`` from ``environ`` (default: the process environment),
    else None (no key). A file that cannot be read, or a key that is empty or not printable ASCII,
    is a :class:`ConfigError`."""
    if api_key_file is not None:
        path = Path(api_key_file)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"--api-key-file {path}: no such file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"--api-key-file {path}: not a text file") from None
        except OSError as err:
            raise ConfigError(f"--api-key-file {path}: cannot read it ({err.strerror})") from None
        return check_api_key(text.strip(), f"the key in --api-key-file {path}")
    value = (os.environ if environ is None else environ).get(API_KEY_ENV)
    return None if value is None else check_api_key(value.strip(), API_KEY_ENV)


# ---------------------------------------------------------------------------------------
# the rule: nothing open beyond loopback by accident
# ---------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for anything else,
    including ``0.0.0.0``, ``::`` (every interface), other addresses and host names."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, has_key: bool, allow_unauthenticated: bool = False) -> None:
    """Refuse to serve on ``host`` without a key unless it is loopback or ``allow_unauthenticated``
    (then warn once). Called before anything listens."""
    if has_key or is_loopback(host):
        return
    if not allow_unauthenticated:
        raise ExposedServerError(
            f"refusing to serve on {host} without an API key: set {API_KEY_ENV} or pass --api-key-file PATH "
            "(or pass --allow-unauthenticated to let anyone who can reach the port use it)")
    warnings.warn(SecurityWarning(f"serving on {host} without an API key (--allow-unauthenticated): anyone who "
                                  "can reach the port may use every endpoint"), stacklevel=2)


# ---------------------------------------------------------------------------------------
# what the key guards
# ---------------------------------------------------------------------------------------
def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class ApiKey:
    """An API key that does not show itself: ``repr`` and ``str`` hide it (so a middleware list, a
    debugger or a log line that prints one shows nothing), and :meth:`matches` compares in constant time.

    Example::

        >>> key = ApiKey("s3cret")
        >>> key, key.matches(b"s3cret"), key.matches(b"s3cre"), key.matches(bytes([255]))
        (ApiKey(<hidden>), True, False, False)
    """

    __slots__ = ("_bytes",)

    def __init__(self, key: str, source: str = "the API key") -> None:
        self._bytes = check_api_key(key, source).encode("ascii")

    def __repr__(self) -> str:
        return "ApiKey(<hidden>)"

    __str__ = __repr__

    def matches(self, presented: bytes) -> bool:
        """``hmac.compare_digest`` on bytes: constant time for a token of the key's length, and False
        (not an exception) for one of another length or with non-ASCII bytes."""
        return hmac.compare_digest(presented, self._bytes)


class ApiKeyMiddleware:
    """401 for any request to a guarded path without ``Authorization: Bearer <key>`` (pure ASGI)."""

    def __init__(self, app: Any, api_key: ApiKey) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # mounted under a prefix: match the app's own paths
            path = path[len(root):] or "/"
        presented = bearer_token(scope.get("headers", ()))
        if is_open_path(path) or (presented is not None and self.api_key.matches(presented)):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # none are served; refuse without a handshake
            await send({"type": "websocket.close", "code": 1008})
            return
        if presented is None:
            answer = error_response(401, "missing_api_key", "this server needs an API key: send the header "
                                    "'Authorization: Bearer <key>'", headers={"WWW-Authenticate": REALM})
        else:
            answer = error_response(401, "invalid_api_key", "the API key was not accepted",
                                    headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'})
        await answer(scope, receive, send)


def bearer_token(headers: Any) -> bytes | None:
    """The token of the first ``Authorization`` header: its bytes after ``Bearer `` (any case); b"" for
    another scheme; None without the header."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = bytes(value).strip().partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return None


def declare_bearer_auth(schema: dict[str, Any]) -> None:
    """Declare the bearer scheme in an OpenAPI ``schema`` and require it (with its 401) on every
    guarded operation, so generated clients and Swagger UI's "Authorize" send the key."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
        "type": "http", "scheme": "bearer",
        "description": f"The server's API key ({API_KEY_ENV} or --api-key-file), sent as 'Authorization: Bearer KEY'."}
    unauthorized = {"description": "No API key, or a wrong one; see WWW-Authenticate.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    for path, operations in schema.get("paths", {}).items():
        if is_open_path(path):
            continue
        for operation in operations.values():
            operation["security"] = [{SECURITY_SCHEME: []}]
            operation.setdefault("responses", {})["401"] = unauthorized
