#!/usr/bin/env bash
# The installable npm packages, in napi-rs's layout: `castline` (JavaScript, TypeScript types)
# with `castline-linux-x64-gnu` (the prebuilt, stripped release addon) as an optional
# dependency, which npm installs only on a matching platform. Writes both tarballs to OUT_DIR
# (default target/npm) and prints their paths.
#
#   bindings/node/scripts/pack.sh [OUT_DIR]
#
# CASTLINE_PACK_PROFILE=dev packs the (stripped) dev-profile build instead of a release build:
# the same files and layout, built in a fraction of the time (the test suite uses it).
#
# The addon links Debian 12's FFmpeg 5.1 (libavcodec59, libavformat59, libswscale6) and
# libpulse0 dynamically: a machine that installs the package needs those libraries, not a
# compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-../../target/npm}")
stage="$out/stage"
rm -rf "$stage"
mkdir -p "$stage/castline" "$stage/linux-x64-gnu" "$stage/bin"
profile=()
[ "${CASTLINE_PACK_PROFILE:-release}" = release ] && profile=(--release)
# Built as `npm run build` builds (same flags, so cargo's cache is reused), stripped afterwards
# (napi's --strip changes the rustflags and would rebuild every crate).
npx napi build --platform "${profile[@]}" --output-dir "$stage/bin" \
  --js native.js --dts native.d.ts >&2
strip --strip-unneeded "$stage/bin/castline.linux-x64-gnu.node"
cp index.js index.d.ts compat.js "$stage/castline/"
# The generated loader and types come from the build (same as `npm run build` makes here).
for f in native.js native.d.ts; do
  if [ -f "$stage/bin/$f" ]; then cp "$stage/bin/$f" "$stage/castline/"; else cp "$f" "$stage/castline/"; fi
done
cp "$stage/bin/castline.linux-x64-gnu.node" "$stage/linux-x64-gnu/"
node - "$stage" <<'JS'
const fs = require('node:fs');
const path = require('node:path');
const stage = process.argv[2];
const main = JSON.parse(fs.readFileSync('package.json', 'utf8'));
const platform = JSON.parse(fs.readFileSync('npm/linux-x64-gnu/package.json', 'utf8'));
platform.version = main.version;
delete main.devDependencies;
delete main.scripts;
main.files = main.files.filter((f) => !f.endsWith('.node'));
main.optionalDependencies = { [platform.name]: main.version };
fs.writeFileSync(path.join(stage, 'castline/package.json'), JSON.stringify(main, null, 2) + '\n');
fs.writeFileSync(path.join(stage, 'linux-x64-gnu/package.json'), JSON.stringify(platform, null, 2) + '\n');
JS
cp ../../LICENSE* "$stage/castline/" 2>/dev/null || true
for p in linux-x64-gnu castline; do
  (cd "$stage/$p" && npm pack --silent --pack-destination "$out") | sed "s|^|$out/|"
done
