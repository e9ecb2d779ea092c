"""What stands between the scoring service and whoever reaches its port (threat model: docs/security.md).

* **API keys.** ``/predict``, ``/metrics``, ``/docs`` and ``/openapi.json`` need
  ``Authorization: Bearer <key>``; ``/healthz`` and ``/readyz`` stay open for probes. The keys live
  in ``$MLOPS_HOME/serving/api-keys.json`` (mode 0600), generated on the service's first start;
  ``mlops api-key rotate`` replaces them (a running service reads the file again when it changes).
  ``MLOPS_SERVING_AUTH=off`` turns the check off for a quick local look.
* **Host allow-list.** A request whose ``Host`` is not in ``MLOPS_SERVING_ALLOWED_HOSTS``
  (loopback names by default) gets 400: a DNS-rebinding page cannot reach the service.
* **Body size before parsing.** A body over the largest ``deployment.limits.max_body_bytes`` of the
  served use cases is answered 413 as soon as its ``Content-Length`` or its bytes say so, before
  any JSON is parsed.

Pure ASGI middleware: a few microseconds a request, nothing on the event loop that waits.
"""
from __future__ import annotations

import hmac
import json
import os
import secrets
import threading
import time
from pathlib import Path

from pipelines.core.config import settings

OPEN_PATHS = ("/healthz", "/readyz")
DEFAULT_HOSTS = "127.0.0.1,localhost,::1"


def key_file(home: Path | None = None) -> Path:
    """The service's API keys (``$MLOPS_HOME/serving/api-keys.json``)."""

    return Path(home or settings().home) / "serving" / "api-keys.json"


def _write_keys(path: Path, keys: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    staging = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump({"keys": keys, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, out)
    os.replace(staging, path)


def ensure_keys(path: Path | None = None) -> Path:
    """The key file, with one new key when there is none yet."""
    path = path or key_file()
    if not path.exists():
        _write_keys(path, [secrets.token_urlsafe(32)])
    return path


def rotate_keys(path: Path | None = None) -> Path:
    """Replace every key by one new key; clients read the file again."""
    path = path or key_file()
    _write_keys(path, [secrets.token_urlsafe(32)])
    return path


def client_key(path: Path | None = None) -> str:
    """The key a client of this deployment sends (the demo, the load test, the tests)."""
    return json.loads(ensure_keys(path).read_text())["keys"][0]


def client_headers(path: Path | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {client_key(path)}"}


def auth_enabled() -> bool:
    return (os.environ.get("MLOPS_SERVING_AUTH") or "on").strip().lower() not in ("off", "0", "false", "no")


def allowed_hosts() -> set[str]:
    return {h.strip().lower() for h in (os.environ.get("MLOPS_SERVING_ALLOWED_HOSTS") or DEFAULT_HOSTS).split(",")
            if h.strip()}


class KeyRing:
    """The accepted keys, read again when the file changes (checked at most once a second)."""

    def __init__(self, path: Path):
        self.path = ensure_keys(path)
        self._stamp: tuple | None = None
        self._keys: list[bytes] = []
        self._checked = 0.0
        self._lock = threading.Lock()

    def keys(self) -> list[bytes]:
        now = time.monotonic()
        if now - self._checked >= 1.0:
            with self._lock:
                self._checked = now
                try:
                    stat = self.path.stat()
                    stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
                    if stamp != self._stamp:
                        self._keys = [k.encode() for k in json.loads(self.path.read_text())["keys"]]
                        self._stamp = stamp
                except (OSError, ValueError, KeyError):   # removed or half-written: keep the keys it had
                    pass
        return self._keys

    def accepts(self, header: bytes | None) -> bool:
        if not header or not header.startswith(b"Bearer "):
            return False
        given = header[len(b"Bearer "):].strip()
        return any(hmac.compare_digest(given, key) for key in self.keys())


def _host(scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"host":
            host = value.decode("latin-1").strip().lower()
            if host.startswith("["):
                return host[1:host.find("]")] if "]" in host else host
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return ""


async def _reply(send, status: int, detail: str, headers: tuple = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: host allow-list, API key, body size (see the module doc)."""

    def __init__(self, app, max_body_bytes: int, keys: KeyRing | None, hosts: set[str]):
        self.app, self.max_body_bytes, self.keys, self.hosts = app, max_body_bytes, keys, hosts
        self.state = app.state   # the service's endpoints, as on the app itself

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if _host(scope) not in self.hosts:
            return await _reply(send, 400, "unknown Host header")
        path = scope.get("path", "")
        if self.keys is not None and not (path in OPEN_PATHS or path.endswith("/readyz")):
            header = dict(scope.get("headers", ())).get(b"authorization")
            if not self.keys.accepts(header):
                return await _reply(send, 401, "an API key is needed: Authorization: Bearer <key> "
                                               "(mlops api-key path)", ((b"www-authenticate", b"Bearer"),))
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            return await _reply(send, 413, f"the body is over {self.max_body_bytes} bytes")
        return await self.app(scope, self._counted(receive, send), send)

    def _counted(self, receive, send):
        """``receive`` that ends a body growing over the limit (chunked bodies have no length)."""
        seen = 0
        limit = self.max_body_bytes

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message
        return counted


class BodyTooLarge(Exception):
    """A streamed body went over the limit (answered 413 by the app's handler)."""

    def __init__(self, limit: int):
        super().__init__(f"the body is over {limit} bytes")
        self.limit = limit
