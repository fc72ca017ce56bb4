#!/usr/bin/env bash
# Installs what castline needs to build, test and benchmark on Debian 12 (idempotent; root or sudo).
set -euo pipefail

PKGS=(
  # build: FFmpeg's libraries through ffmpeg-next (bindgen needs clang)
  pkg-config clang libclang-dev
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev
  libavfilter-dev libavdevice-dev
  # tests: a real X server, ffprobe/ffmpeg to read results back, nginx-rtmp as RTMP server
  xvfb ffmpeg nginx libnginx-mod-rtmp libnginx-mod-stream openssl
  # audio: PulseAudio client library (build), a headless daemon and pactl for the tests
  libpulse-dev pulseaudio pulseaudio-utils
  # WebRTC tests: headless Chromium (driven by playwright-core from npm), and Janus (a real SFU
  # for the WHIP interop test), iproute2 for its network namespace. Node.js: see below.
  chromium janus iproute2 nftables
  # benchmark: the tools users run today, and /usr/bin/time for CPU and RSS
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad gstreamer1.0-x time
  # benchmark: libx264 through its C API (bench/x264_mbinfo.c)
  libx264-dev
)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# Node.js (with npm) for the browser tests, unless one is installed already (e.g. NodeSource's,
# which Debian's npm package would conflict with).
command -v npm >/dev/null 2>&1 || PKGS+=(nodejs npm)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  # Packages such as nginx start a system service on 0.0.0.0 when installed; the tests start
  # their own servers on loopback, so no service may start during the install.
  added_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    added_policy=1
  fi
  $SUDO apt-get update -qq
  status=0
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
  [ -z "$added_policy" ] || $SUDO rm -f /usr/sbin/policy-rc.d
  [ "$status" = 0 ] || { echo "setup: apt-get install failed ($status)" >&2; exit "$status"; }
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing Rust with rustup"
    $SUDO apt-get install -y -qq curl ca-certificates >/dev/null
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

# playwright-core drives Debian's Chromium in the browser tests (no browser download).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BROWSER_TESTS="$ROOT/crates/castline-cli/tests/browser"
if [ ! -d "$BROWSER_TESTS/node_modules/playwright-core" ]; then
  echo "setup: npm ci in $BROWSER_TESTS"
  (cd "$BROWSER_TESTS" && npm ci --no-audit --no-fund --loglevel=error)
fi
# The Node.js binding's build tool (@napi-rs/cli).
if [ ! -d "$ROOT/bindings/node/node_modules/@napi-rs/cli" ]; then
  echo "setup: npm install in $ROOT/bindings/node"
  # npm install, not ci: the lock file lists only the build tool's packages for this platform.
  (cd "$ROOT/bindings/node" && npm install --no-audit --no-fund --loglevel=error)
fi

# LiveKit tests: the real LiveKit server, built from the Go module proxy (cached outside the
# repository, never committed), and LiveKit's own Python client as the subscriber. Without Go the
# LiveKit tests say so and skip.
LIVEKIT_SERVER_VERSION=v1.13.5
LIVEKIT_BIN_DIR="$HOME/.cache/castline/livekit-bin"
[ -d /usr/local/go/bin ] && case ":$PATH:" in *:/usr/local/go/bin:*) ;; *) export PATH="$PATH:/usr/local/go/bin" ;; esac
if [ "$(cat "$LIVEKIT_BIN_DIR/server.version" 2>/dev/null)" != "$LIVEKIT_SERVER_VERSION" ] || [ ! -x "$LIVEKIT_BIN_DIR/server" ]; then
  if command -v go >/dev/null 2>&1; then
    echo "setup: building livekit-server $LIVEKIT_SERVER_VERSION (go install, a few minutes)"
    if GOBIN="$LIVEKIT_BIN_DIR" CGO_ENABLED=0 GOFLAGS=-mod=mod \
        go install "github.com/livekit/livekit-server/cmd/server@$LIVEKIT_SERVER_VERSION"; then
      echo "$LIVEKIT_SERVER_VERSION" > "$LIVEKIT_BIN_DIR/server.version"
    else
      echo "setup: WARNING: building the LiveKit server failed; the LiveKit tests will skip" >&2
    fi
  else
    echo "setup: no Go toolchain: the LiveKit tests will skip (install Go to run them)"
  fi
fi
if ! python3 -c "import livekit.rtc, livekit.api" >/dev/null 2>&1; then
  echo "setup: pip install livekit livekit-api (LiveKit's client, for the LiveKit tests)"
  PIP_PKGS=(livekit==1.2.1 livekit-api==1.2.2)
  python3 -m pip install -q --disable-pip-version-check "${PIP_PKGS[@]}" 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages "${PIP_PKGS[@]}" \
    || echo "setup: WARNING: pip could not install the LiveKit client; the LiveKit tests will skip" >&2
fi
