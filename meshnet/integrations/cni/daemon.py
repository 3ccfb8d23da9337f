"""The plugin's side of the daemon's API: JSON over HTTP/1.1 on the unix socket.

The CLI's ``meshnet.api.client`` does the same with httpx, but importing httpx alone takes
~90 ms here and the plugin starts for every container (``http.client``: ~25 ms).
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any


class DaemonUnreachable(Exception):
    """No daemon answers on the socket (not running, or not yet): worth trying again later."""


class DaemonError(Exception):
    """The daemon answered with an error; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("meshnet", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class DaemonClient:
    def __init__(self, socket_path: Path, *, timeout: float) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if payload is not None else {}
        connection = _UnixConnection(self.socket_path, self.timeout)
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except FileNotFoundError:
            raise DaemonUnreachable(
                f"meshnet is not running (no API socket at {self.socket_path})"
            ) from None
        except PermissionError:
            raise DaemonUnreachable(f"permission denied on {self.socket_path}") from None
        except (OSError, http.client.HTTPException) as e:
            raise DaemonUnreachable(
                f"cannot reach meshnet at {self.socket_path}: {e or type(e).__name__}"
            ) from None
        finally:
            connection.close()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            raise DaemonError(
                response.status, f"meshnet answered {response.status} without JSON"
            ) from None
        if response.status >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            raise DaemonError(response.status, message or f"meshnet answered {response.status}")
        return data

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)
