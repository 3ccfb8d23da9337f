"""A fake Kubernetes API server for tests: run inside a namespace, prints "ready" once bound.

    python tests/net/kube_apiserver.py ADDRESS PORT CERT KEY TOKEN NODES_FILE

Serves ``GET /api/v1/nodes`` over HTTPS as the real one does for a service account allowed to
list nodes: the ``NodeList`` made from NODES_FILE (JSON: node name -> InternalIP), read again on
every request so a test edits the cluster by rewriting the file, and paged two nodes at a time
(``limit``/``continue``) so the client must follow pages. A request without the bearer token
TOKEN gets 401, any other path 404, as ``Status`` objects.
"""

from __future__ import annotations

import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PAGE = 2


class Handler(BaseHTTPRequestHandler):
    token = ""
    nodes_file = ""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self._answer(401, {"kind": "Status", "message": "Unauthorized", "code": 401})
            return
        if url.path != "/api/v1/nodes":
            self._answer(404, {"kind": "Status", "message": "not found", "code": 404})
            return
        with open(self.nodes_file) as f:
            nodes = sorted(json.load(f).items())
        start = int(parse_qs(url.query).get("continue", ["0"])[0])
        page = nodes[start : start + PAGE]
        more = str(start + PAGE) if start + PAGE < len(nodes) else ""
        items = [
            {
                "metadata": {"name": name},
                "status": {
                    "addresses": [
                        {"type": "InternalIP", "address": ip},
                        {"type": "Hostname", "address": name},
                    ]
                },
            }
            for name, ip in page
        ]
        metadata = {"resourceVersion": "1", **({"continue": more} if more else {})}
        self._answer(
            200, {"kind": "NodeList", "apiVersion": "v1", "metadata": metadata, "items": items}
        )

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    address, port, cert, key, token, nodes_file = sys.argv[1:7]
    Handler.token, Handler.nodes_file = token, nodes_file
    server = ThreadingHTTPServer((address, int(port)), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
