#!/usr/bin/env bash
# Installs meshnet, then builds the demo lab: 3 hosts in a line, 2 containers each.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if .venv/bin/meshnet lab status --name demo >/dev/null 2>&1; then
  .venv/bin/meshnet lab down --name demo
fi
.venv/bin/meshnet lab up --name demo --hosts 3 --topology line --containers 2
cat <<'HINT'

Try:   .venv/bin/meshnet lab exec h1 -- ping -c 3 172.31.0.2     (h1 reaches h2)
       .venv/bin/meshnet lab exec h1 -- ping -c 1 172.31.1.2     (h1 cannot reach h3)
       .venv/bin/meshnet lab exec h1-c1 -- ping -c 3 h3-c2       (its containers can, by name)
       .venv/bin/meshnet lab exec h1-c1 -- dig h2-c1.meshnet.local
       .venv/bin/meshnet lab exec h1-c1 -- ping -6 -c 3 h3-c2    (over IPv6: containers are dual stack)
       .venv/bin/meshnet lab exec h1 -- .venv/bin/meshnet status dataplane   (kernel VXLAN to h2)
       .venv/bin/meshnet lab tui h1                              (the live view; q quits)
       .venv/bin/meshnet lab status
Done:  .venv/bin/meshnet lab down
HINT
