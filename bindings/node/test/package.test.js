'use strict';
// The installable package: scripts/pack.sh makes the two tarballs (napi-rs layout: the main
// package and the prebuilt linux-x64-gnu addon as an optional dependency); they install into an
// empty folder with `npm install --offline` (no compiler, no network) and the installed package
// records a clip through require('castline'), checked with ffprobe.
const { test } = require('node:test');
const assert = require('node:assert');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

test('npm pack → npm install --offline in an empty folder → require("castline") records a clip', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'castline-pkg-'));
  const out = path.join(tmp, 'tarballs');
  // The dev-profile build (stripped): the same package as a release one, without a second
  // full optimized build in the test run.
  const tarballs = execFileSync('bash', [path.join(__dirname, '../scripts/pack.sh'), out],
    { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, CASTLINE_PACK_PROFILE: 'dev' } }).toString().trim().split('\n');
  assert.strictEqual(tarballs.length, 2, tarballs.join(' '));
  for (const t of tarballs) assert.ok(fs.existsSync(t), t);
  const [platformTgz, mainTgz] = tarballs;
  assert.match(path.basename(platformTgz), /^castline-linux-x64-gnu-\d+\.\d+\.\d+\.tgz$/);
  assert.match(path.basename(mainTgz), /^castline-\d+\.\d+\.\d+\.tgz$/);

  const app = path.join(tmp, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), '{"name":"app","version":"1.0.0","private":true}\n');
  execFileSync('npm', ['install', '--offline', '--no-audit', '--no-fund', '--ignore-scripts=false',
    platformTgz, mainTgz], { cwd: app, stdio: 'inherit' });
  const mod = path.join(app, 'node_modules');
  assert.ok(fs.existsSync(path.join(mod, 'castline/index.d.ts')), 'types are in the package');
  assert.ok(!fs.readdirSync(path.join(mod, 'castline')).some((f) => f.endsWith('.node')),
    'the main package carries no addon');
  const addon = path.join(mod, 'castline-linux-x64-gnu/castline.linux-x64-gnu.node');
  assert.ok(fs.statSync(addon).size < 80e6, 'the addon is stripped');

  const clip = path.join(tmp, 'clip.mp4');
  const script = `
    const c = require('castline');
    (async () => {
      await c.startScreenShare({ target: ${JSON.stringify('file://' + clip)}, targetType: 'testsrc',
        size: '640x360', fps: 30 }, (e) => { console.error(e); process.exitCode = 1; });
      await new Promise((r) => setTimeout(r, 2000));
      await c.stopScreenShare();
      console.log(require.resolve('castline'));
    })();`;
  const where = execFileSync('node', ['-e', script], { cwd: app, env: { ...process.env, NODE_PATH: '' } })
    .toString().trim();
  assert.strictEqual(where, path.join(mod, 'castline/index.js'), 'the installed package was used');
  const probe = JSON.parse(execFileSync('ffprobe', ['-v', 'error', '-count_frames', '-select_streams', 'v:0',
    '-show_entries', 'stream=codec_name,width,height,nb_read_frames', '-of', 'json', clip]).toString());
  const v = probe.streams[0];
  assert.deepStrictEqual([v.codec_name, v.width, v.height], ['h264', 640, 360]);
  assert.ok(Number(v.nb_read_frames) >= 45, JSON.stringify(v));
});
