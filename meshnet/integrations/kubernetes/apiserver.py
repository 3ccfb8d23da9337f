"""The Kubernetes API as a pod sees it: the node list over HTTPS, nothing else.

In-cluster configuration, as client-go's ``rest.InClusterConfig``: the server at
``KUBERNETES_SERVICE_HOST``:``KUBERNETES_SERVICE_PORT``, trusted through the service account's
``ca.crt``, authenticated with its ``token``. The token is read again for every request: bound
service-account tokens expire (an hour by default) and the kubelet rewrites the file.
``MESHNET_KUBE_SERVICEACCOUNT_DIR`` points elsewhere (tests, or a token mounted by hand).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from meshnet.errors import UserError
from meshnet.integrations.kubernetes.peers import KubeNode, NodeListError, parse_node_list

SERVICEACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
PAGE = 500  # nodes per request; a bigger cluster is read in pages (``continue``)


class ApiServerError(Exception):
    """The API server could not be reached or refused: worth trying again at the next poll."""


@dataclass(frozen=True)
class ApiServer:
    url: str  # https://HOST:PORT
    token_file: Path
    ca_file: Path
    timeout: float = 10.0

    @classmethod
    def in_cluster(cls, environ: Mapping[str, str]) -> ApiServer:
        """From the variables every pod gets; one readable line when they are missing."""
        host = environ.get("KUBERNETES_SERVICE_HOST", "").strip()
        port = environ.get("KUBERNETES_SERVICE_PORT", "").strip() or "443"
        if not host:
            raise UserError(
                "MESHNET_KUBE_PEERS=1 needs KUBERNETES_SERVICE_HOST (set in every pod): "
                "not running in a Kubernetes pod? Give MESHNET_PEERS instead"
            )
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"bad KUBERNETES_SERVICE_PORT {port!r}")
        directory = Path(environ.get("MESHNET_KUBE_SERVICEACCOUNT_DIR") or SERVICEACCOUNT_DIR)
        for name in ("token", "ca.crt"):
            if not (directory / name).is_file():
                raise UserError(
                    f"no service-account {name} in {directory}: is automountServiceAccountToken "
                    "off for the meshnet pod?"
                )
        shown = f"[{host}]" if ":" in host else host
        return cls(f"https://{shown}:{port}", directory / "token", directory / "ca.crt")

    def list_nodes(self) -> tuple[KubeNode, ...]:
        """``GET /api/v1/nodes``, every page; ApiServerError on any failure."""
        try:
            token = self.token_file.read_text().strip()
            context = ssl.create_default_context(cafile=str(self.ca_file))
        except (OSError, ssl.SSLError) as e:
            raise ApiServerError(f"cannot read the service account's token or CA: {e}") from None
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        items: list[object] = []
        params: dict[str, str | int] = {"limit": PAGE}
        try:
            with httpx.Client(verify=context, headers=headers, timeout=self.timeout) as client:
                while True:
                    response = client.get(f"{self.url}/api/v1/nodes", params=params)
                    if response.status_code != 200:
                        raise ApiServerError(
                            f"{self.url} answered {response.status_code} to GET /api/v1/nodes"
                            + _reason(response)
                        )
                    page = response.json()
                    if not isinstance(page, dict) or not isinstance(page.get("items"), list):
                        raise ApiServerError(f"{self.url} answered something not a NodeList")
                    items += page["items"]
                    more = (page.get("metadata") or {}).get("continue")
                    if not more:
                        break
                    params = {"limit": PAGE, "continue": str(more)}
        except httpx.HTTPError as e:
            raise ApiServerError(f"cannot reach {self.url}: {e or type(e).__name__}") from None
        except ValueError:
            raise ApiServerError(f"{self.url} answered without JSON") from None
        try:
            return parse_node_list({"items": items})
        except NodeListError as e:
            raise ApiServerError(str(e)) from None


def _reason(response: httpx.Response) -> str:
    """The Status object's message (403: which permission is missing), if there is one."""
    try:
        message = response.json().get("message")
    except (ValueError, AttributeError):
        return ""
    return f": {message}" if isinstance(message, str) and message else ""
