#!/usr/bin/env bash
# The whole test suite: unit tests and integration tests against real Xvfb, ffmpeg and ffprobe
# (started by the tests themselves), then the Node.js binding's tests (node --test). Tests run one
# at a time: several record real-time video and would compete for the 2 cores otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# One set of build artifacts for both halves: napi's build always passes --target, which puts
# everything under target/<triple>/; building the Rust tests for that same triple lets the
# binding reuse their dependencies instead of compiling them all a second time.
export CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-$(rustc -vV | sed -n 's/^host: //p')}"
cargo test --workspace --all-targets -- --test-threads=1
(cd bindings/node && npm run build && npm test)
