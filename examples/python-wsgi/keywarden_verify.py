"""Verifying API keys through keywarden's verification service, from Python.

Standard library only: http.client over the service's Unix socket
(README.md, "The verification service"), and a WSGI middleware doing
what the guide's authenticateApiKey does, with keywarden deciding.

    from keywarden_verify import ApiKeyMiddleware
    app = ApiKeyMiddleware(app, socket_path="/run/keywarden/verify.sock",
                           scopes=["read:products"])

keywarden applies every rule, counts the use and writes the audit row;
when it cannot answer, the request is refused with 503 (fail closed).
"""

import http.client
import json
import socket
import threading

DEFAULT_SOCKET = "/run/keywarden/verify.sock"

# Refusals for a valid key that may not do this: 403; the others 401.
FORBIDDEN = {"ip_not_allowed", "missing_scope", "owner_disabled"}


class VerifyUnavailable(Exception):
    """The service could not be asked, or answered with an error."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class Verifier:
    """A client of the service, keeping one connection per thread alive."""

    def __init__(self, socket_path=DEFAULT_SOCKET, timeout=10.0):
        self.socket_path = socket_path
        self.timeout = timeout
        self._local = threading.local()

    def verify(self, key, ip=None, scopes=(), endpoint=None, user_agent=None):
        """keywarden's answer as a dict: outcome 'valid' (key_id, prefix,
        owner_id, name, scopes, expires_at, grace_ends_at) or 'refused'
        (reason, detail, message). Raises VerifyUnavailable otherwise."""
        body = json.dumps(
            {
                "key": key,
                "ip": ip,
                "scopes": list(scopes),
                "endpoint": endpoint,
                "user_agent": user_agent,
            }
        ).encode()
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = _UnixConnection(self.socket_path, self.timeout)
            try:
                conn.request("POST", "/v1/verify", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self._local.conn = None
                # A kept-alive connection the service closed: once more.
                if attempt == 2 or isinstance(e, (FileNotFoundError, ConnectionRefusedError)):
                    raise VerifyUnavailable(str(e)) from e
                continue
            try:
                answer = json.loads(data)
            except ValueError as e:
                raise VerifyUnavailable(f"keywarden answered {resp.status} without JSON") from e
            if resp.status != 200:
                raise VerifyUnavailable(f"keywarden answered {resp.status}: {answer.get('error')}")
            return answer
        raise VerifyUnavailable("unreachable")


def _presented_key(environ):
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if auth.startswith("Bearer "):
        return auth[7:].strip()
    return environ.get("HTTP_X_API_KEY", "").strip()


def _json(start_response, status, payload, headers=()):
    body = json.dumps(payload).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))] + list(headers),
    )
    return [body]


class ApiKeyMiddleware:
    """WSGI middleware: refuses requests without a key keywarden finds
    valid; sets environ['keywarden.key'] to keywarden's answer otherwise."""

    def __init__(self, app, socket_path=DEFAULT_SOCKET, scopes=(), timeout=10.0):
        self.app = app
        self.scopes = list(scopes)
        self.verifier = Verifier(socket_path, timeout)

    def __call__(self, environ, start_response):
        key = _presented_key(environ)
        if not key:
            return _json(start_response, "401 Unauthorized", {"error": "Missing or invalid Authorization header"})
        try:
            answer = self.verifier.verify(
                key,
                ip=environ.get("REMOTE_ADDR"),
                scopes=self.scopes,
                endpoint=f"{environ.get('REQUEST_METHOD', '')} {environ.get('PATH_INFO', '')}",
                user_agent=environ.get("HTTP_USER_AGENT"),
            )
        except VerifyUnavailable:
            return _json(start_response, "503 Service Unavailable", {"error": "Authentication is unavailable"})
        if answer.get("outcome") != "valid":
            reason = answer.get("reason")
            status = "403 Forbidden" if reason in FORBIDDEN else "401 Unauthorized"
            return _json(start_response, status, {"error": "Invalid API key", "reason": reason})
        environ["keywarden.key"] = answer
        if answer.get("grace_ends_at"):
            extra = [("X-API-Key-Status", "grace-period"), ("X-API-Key-Valid-Until", answer["grace_ends_at"])]

            def start_with_grace(status, headers, exc_info=None):
                return start_response(status, list(headers) + extra, exc_info)

            return self.app(environ, start_with_grace)
        return self.app(environ, start_response)
