'use strict';
// What the binding's tests share: the castline-testkit fixture binary and a private Xvfb screen
// showing its moving content (every frame new, so zero-hertz never idles).
const { spawn, execFileSync } = require('node:child_process');
const path = require('node:path');
const engine = require('..');

const root = path.join(__dirname, '../../..');
// scripts/test.sh builds for an explicit target triple (CARGO_BUILD_TARGET), which puts the
// binaries under target/<triple>/.
const triple = process.env.CARGO_BUILD_TARGET;
const testkit = path.join(root, 'target', triple || '', 'debug/castline-testkit');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Xvfb 1280x720 on a display derived from `base` and the pid, with testkit `content` on it;
 * sets $DISPLAY; the processes are pushed onto `children` (kill them after the tests). */
async function movingScreen(base, children) {
  // Built by the Rust suite (a no-op then); built here when a file runs alone. The suite's own
  // command, so that cargo resolves the same features and reuses what the suite built (a
  // `cargo build -p castline-cli` would rebuild much of the dependency tree).
  execFileSync('cargo', ['test', '-q', '--workspace', '--all-targets', '--no-run'],
    { cwd: root, stdio: 'inherit' });
  const display = ':' + (base + (process.pid % 200));
  children.push(spawn('Xvfb', [display, '-screen', '0', '1280x720x24', '-nolisten', 'tcp'],
    { stdio: 'ignore' }));
  process.env.DISPLAY = display;
  for (let i = 0; i < 50; i++) {
    try { engine.listDisplays(); break; } catch (e) { await sleep(100); }
  }
  children.push(spawn(testkit, ['content', '--fps', '30'], { stdio: 'ignore', env: process.env }));
  await sleep(1000);
}

module.exports = { root, testkit, sleep, movingScreen };
