"""The CLI's side of the API: JSON over HTTP on the daemon's unix socket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from meshnet.errors import UserError


class ApiClient:
    def __init__(self, socket_path: Path, *, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self._timeout = timeout

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if not self.socket_path.exists():
            raise UserError(
                f"meshnet is not running (no API socket at {self.socket_path}); "
                "start it with `meshnet launch`"
            )
        transport = httpx.HTTPTransport(uds=str(self.socket_path))
        try:
            with httpx.Client(transport=transport, timeout=self._timeout) as client:
                response = client.request(method, f"http://meshnet{path}", json=body)
        except PermissionError:
            raise UserError(f"permission denied on {self.socket_path} (run as root?)") from None
        except httpx.TransportError as e:
            raise UserError(
                f"cannot reach meshnet at {self.socket_path}: {e or type(e).__name__}"
            ) from None
        try:
            data = response.json()
        except ValueError:
            raise UserError(f"meshnet answered {response.status_code} without JSON") from None
        if response.status_code >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            raise UserError(message or f"meshnet answered {response.status_code}")
        return data

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._request("POST", path, body or {})

    def is_ready(self) -> bool:
        try:
            self.get("/status")
        except UserError:
            return False
        return True
