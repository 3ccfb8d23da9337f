"""meshnet on a Kubernetes cluster: what the DaemonSet's pod runs (`meshnet kube run`).

- ``peers``      the pure core: the peer list from ``MESHNET_PEERS`` or the API's node list, and
                 the reconciler deciding whom to dial, forget and reclaim (rmpeer)
- ``apiserver``  the Kubernetes API as the pod sees it: one GET of the node list, HTTPS with
                 the service account's token and CA
- ``cni_files``  the CNI conflist and the `meshnet-cni` plugin, installed onto the node
- ``entrypoint`` the trio shell: the router in this process, then expose, CNI files, and the
                 watch of the node list

The manifests and the image recipe are in ``examples/kubernetes/``.
"""
