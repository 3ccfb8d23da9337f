#!/usr/bin/env bash
# Installs meshnet system-wide on a Debian or Ubuntu host (Python >= 3.11), as root:
#
#   scripts/install-system.sh                       # from this checkout
#   scripts/install-system.sh --from meshnet_overlay-0.1.0-py3-none-any.whl   # or an sdist
#   scripts/install-system.sh --uninstall [--purge] # remove it all (--purge: the state too)
#
# What it puts where:
#   apt packages   iproute2 nftables python3 python3-venv ca-certificates (what the router runs)
#   /opt/meshnet                       a virtual environment with meshnet and its dependencies
#   /usr/local/bin/meshnet             -> /opt/meshnet/bin/meshnet
#   /opt/cni/bin/meshnet-cni           the CNI plugin (a wrapper running /opt/meshnet's)
#   /etc/systemd/system/meshnet.service  runs `meshnet launch --foreground $MESHNET_PEERS`
#   /etc/default/meshnet               its settings: MESHNET_* variables (kept on upgrade)
#   /var/lib/meshnet                   the router's state (made by the router; --purge removes it)
# Running it again upgrades meshnet in place and keeps /etc/default/meshnet. It never enables
# or starts the service: edit /etc/default/meshnet, then `systemctl enable --now meshnet`.
#
# Options: --from PATH (wheel, sdist or source directory), --python PYTHON (default
# /usr/bin/python3), --cni-bin-dir DIR (default /opt/cni/bin), --no-apt (the packages are
# there already, or this is not Debian), --no-systemctl (do not talk to systemd).
set -euo pipefail

PREFIX=/opt/meshnet
BIN_LINK=/usr/local/bin/meshnet
UNIT=/etc/systemd/system/meshnet.service
ENV_FILE=/etc/default/meshnet
STATE_DIR=/var/lib/meshnet
RUN_DIR=/run/meshnet
MANIFEST=$PREFIX/install-manifest  # what this install created: the uninstall's list
CNI_MARKER="installed by meshnet's install-system.sh"
APT_PACKAGES=(iproute2 nftables python3 python3-venv ca-certificates)

source_path=""
python=""
cni_bin_dir=/opt/cni/bin
apt=1
systemctl_ok=1
mode=install
purge=0

die() { echo "install-system.sh: $*" >&2; exit 1; }
say() { echo "meshnet: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --from) [ $# -ge 2 ] || die "--from needs a wheel, an sdist or a directory"; source_path=$2; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter"; python=$2; shift ;;
    --cni-bin-dir) [ $# -ge 2 ] || die "--cni-bin-dir needs a directory"; cni_bin_dir=$2; shift ;;
    --no-apt) apt=0 ;;
    --no-systemctl) systemctl_ok=0 ;;
    --uninstall) mode=uninstall ;;
    --purge) purge=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
[ "$(id -u)" -eq 0 ] || die "run it as root (it writes /opt, /usr/local/bin and /etc)"
[ $purge -eq 0 ] || [ $mode = uninstall ] || die "--purge goes with --uninstall"

have_systemd() { [ $systemctl_ok -eq 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

uninstall() {
  if have_systemd; then
    systemctl disable --now meshnet.service >/dev/null 2>&1 || true
  fi
  if [ -x $PREFIX/bin/meshnet ] && $PREFIX/bin/meshnet status >/dev/null 2>&1; then
    say "stopping the router"
    $PREFIX/bin/meshnet stop >/dev/null 2>&1 || true
  fi
  local created=()
  [ -f "$MANIFEST" ] && mapfile -t created < "$MANIFEST"
  rm -f "$UNIT"
  have_systemd && systemctl daemon-reload || true
  if [ -L "$BIN_LINK" ] && [ "$(readlink "$BIN_LINK")" = "$PREFIX/bin/meshnet" ]; then rm -f "$BIN_LINK"; fi
  local entry cni
  for entry in "${created[@]}"; do
    case "$entry" in cni-plugin:*) cni=${entry#cni-plugin:}
      if [ -f "$cni" ] && grep -q "$CNI_MARKER" "$cni"; then rm -f "$cni"; fi ;;
    esac
  done
  rm -f "$ENV_FILE"
  rm -rf "$PREFIX"
  # Directories this install had to create (the CNI bin dir, say), deepest first, if empty now.
  for ((i=${#created[@]}-1; i>=0; i--)); do
    case "${created[$i]}" in dir:*) rmdir "${created[$i]#dir:}" 2>/dev/null || true ;; esac
  done
  if [ $purge -eq 1 ]; then
    rm -rf "$STATE_DIR"
    rmdir "$RUN_DIR" 2>/dev/null || true  # the socket went with the router; labs live here too
    say "removed, with the state in $STATE_DIR"
  else
    say "removed (the state in $STATE_DIR stays: --uninstall --purge removes it)"
  fi
}

if [ $mode = uninstall ]; then
  uninstall
  exit 0
fi

# --- install -----------------------------------------------------------------------------------

here=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "$source_path" ]; then
  [ -f "$here/pyproject.toml" ] || die "not in a checkout: give --from WHEEL|SDIST|DIRECTORY"
  source_path=$here
fi
[ -e "$source_path" ] || die "--from $source_path: no such file or directory"
source_path=$(realpath "$source_path")

if [ $apt -eq 1 ]; then
  command -v dpkg-query >/dev/null || die "not a Debian/Ubuntu host (no dpkg): install ${APT_PACKAGES[*]} yourself and pass --no-apt"
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

if [ -z "$python" ]; then
  if [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; else python=python3; fi
fi
command -v "$python" >/dev/null || die "no $python: install Python 3.11 or newer (--python PATH)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$python is Python $("$python" -c 'import platform; print(platform.python_version())'): meshnet needs 3.11 or newer (--python PATH)"
"$python" -c 'import venv, ensurepip' 2>/dev/null || die "$python has no venv module: apt-get install python3-venv"

created=()
mkdirs() {  # mkdir -p, remembering each directory it had to make
  local dir=$1 missing_dirs=()
  while [ ! -d "$dir" ]; do missing_dirs=("$dir" "${missing_dirs[@]}"); dir=$(dirname "$dir"); done
  for dir in "${missing_dirs[@]}"; do mkdir "$dir"; created+=("dir:$dir"); done
}

if [ -f "$MANIFEST" ]; then
  mapfile -t created < "$MANIFEST"  # an upgrade: what the first install made still goes
fi
version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
if [ -x $PREFIX/bin/python ] && [ "$(version_of $PREFIX/bin/python)" != "$(version_of "$python")" ]; then
  say "recreating $PREFIX for $("$python" --version)"
  rm -rf "$PREFIX"
  created=()
fi
if [ ! -x $PREFIX/bin/python ]; then
  mkdirs "$(dirname "$PREFIX")"
  "$python" -m venv "$PREFIX"
fi
say "installing meshnet from $source_path into $PREFIX"
# --upgrade: a newer meshnet replaces the old one (a source directory is always rebuilt).
$PREFIX/bin/python -m pip install -q --disable-pip-version-check --upgrade "$source_path"
version=$($PREFIX/bin/meshnet --version)

mkdirs "$(dirname "$BIN_LINK")"
ln -sfn "$PREFIX/bin/meshnet" "$BIN_LINK"

mkdirs "$cni_bin_dir"
cni_plugin=$cni_bin_dir/meshnet-cni
cat > "$cni_plugin.tmp" <<EOF
#!/bin/sh
# meshnet-cni, $CNI_MARKER: the plugin runs from $PREFIX.
exec $PREFIX/bin/meshnet-cni "\$@"
EOF
chmod 755 "$cni_plugin.tmp"
mv -f "$cni_plugin.tmp" "$cni_plugin"
created+=("cni-plugin:$cni_plugin")

mkdirs "$(dirname "$UNIT")"
$PREFIX/bin/python -m meshnet.cli.system_files unit "$BIN_LINK" "$ENV_FILE" > "$UNIT"
chmod 644 "$UNIT"
mkdirs "$(dirname "$ENV_FILE")"
if [ ! -e "$ENV_FILE" ]; then
  (umask 077 && $PREFIX/bin/python -m meshnet.cli.system_files env "$ENV_FILE" > "$ENV_FILE")
  env_note="wrote $ENV_FILE"
else
  env_note="kept $ENV_FILE"
fi
printf '%s\n' "${created[@]}" | awk '!seen[$0]++' > "$MANIFEST"
have_systemd && systemctl daemon-reload || true

say "$version installed; $env_note"
say "next: set MESHNET_PEERS (and MESHNET_PASSWORD_FILE) in $ENV_FILE, then: systemctl enable --now meshnet"
