'use strict';
// The failure policy against real faults (a shared X window closed mid-share), start/stop
// races, and the process left as it was: threads and descriptors counted in /proc/self.
const { test, before, after } = require('node:test');
const assert = require('node:assert');
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const engine = require('..');

const { testkit, sleep, movingScreen } = require('./fixtures.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'castline-health-'));
const children = [];
let baseline;

const threads = () => fs.readdirSync('/proc/self/task').length;
const fds = () => fs.readdirSync('/proc/self/fd').length;

/** Threads and fds once the engine's threads have had time to end. */
async function settled() {
  await sleep(500);
  return { threads: threads(), fds: fds() };
}

before(async () => {
  await movingScreen(760, children);
  // One short run first: what the runtime keeps for good (libuv's pool, napi's queues) is
  // then part of the baseline.
  const s = new engine.Session({ target: 'file://' + path.join(tmp, 'warm.mp4'), targetType: 'testsrc',
    size: '320x240', audio: 'none' });
  await s.start();
  await sleep(500);
  await s.stop();
  baseline = await settled();
});

after(() => { for (const c of children) c.kill('SIGKILL'); });

function duration(file) {
  return Number(JSON.parse(execFileSync('ffprobe', ['-v', 'error', '-show_entries', 'format=duration',
    '-of', 'json', file]).toString()).format.duration);
}

function openWindow(args) {
  return new Promise((resolve, reject) => {
    const p = spawn(testkit, ['window', ...args], { env: process.env });
    children.push(p);
    readline.createInterface({ input: p.stdout }).once('line', (l) => resolve({ p, id: parseInt(l, 16) }));
    p.on('error', reject);
  });
}

test('a shared window closed mid-share: unstable then fallback_recommended, a clean stop, the recording playable', async () => {
  const { p, id } = await openWindow(['--size', '320x240']);
  const file = path.join(tmp, 'window.mp4');
  const s = new engine.Session({ target: 'file://' + file, targetType: 'window', targetId: id,
    fps: 30, audio: 'none' });
  const events = [];
  const stats = [];
  s.on('event', (e) => events.push(e));
  s.on('stats', (st) => stats.push(st));
  s.on('error', () => {}); // the capture error is expected; the events are what is checked
  const stopped = new Promise((r) => s.once('stopped', r));
  await s.start();
  await sleep(2500);
  p.kill('SIGKILL');
  await Promise.race([stopped, sleep(10000).then(() => { throw new Error('never stopped'); })]);
  const names = events.map((e) => e.name);
  const at = (n) => names.indexOf(n);
  assert.ok(at('unstable') >= 0, JSON.stringify(events));
  assert.ok(at('started') < at('unstable') && at('unstable') < at('fallback_recommended')
    && at('fallback_recommended') < at('stopping'), names.join(' '));
  const fallback = JSON.parse(events[at('fallback_recommended')].detail);
  assert.strictEqual(fallback.stage, 'capture');
  assert.ok(fallback.reason.length > 0, JSON.stringify(fallback));
  const unstable = JSON.parse(events[at('unstable')].detail);
  assert.deepStrictEqual([unstable.stage, unstable.window_s], ['capture', 30]);
  // The stats carried every stage's verdict, ok while the window was there.
  const first = stats[0].health.find((h) => h.stage === 'capture');
  assert.strictEqual(first.state, 'ok', JSON.stringify(stats[0].health));
  assert.ok(stats[0].health.some((h) => h.stage === 'encode'));
  const d = duration(file);
  assert.ok(d > 2.0 && d < 4.0, `recording of ${d} s`);
  const now = await settled();
  assert.ok(now.threads <= baseline.threads && now.fds <= baseline.fds,
    `threads/fds ${JSON.stringify(now)} vs ${JSON.stringify(baseline)}`);
});

test('a healthy run with stopOnUnstable reports ok for every stage and is not stopped', async () => {
  const file = path.join(tmp, 'healthy.mp4');
  const s = new engine.Session({ target: 'file://' + file, targetType: 'primary', fps: 30,
    audio: 'none', stopOnUnstable: true });
  const events = [];
  const stats = [];
  s.on('event', (e) => events.push(e.name));
  s.on('stats', (st) => stats.push(st));
  await s.start();
  await sleep(3500);
  await s.stop();
  assert.ok(!events.includes('unstable') && !events.includes('fallback_recommended'), events.join(' '));
  const last = stats[stats.length - 1].health;
  assert.deepStrictEqual(last.map((h) => [h.stage, h.state]).sort(),
    [['capture', 'ok'], ['encode', 'ok'], [last.find((h) => h.stage.endsWith('.mp4')).stage, 'ok']].sort());
  assert.ok(duration(file) > 3.0);
});

test('stop during start, stop twice, stop from a callback: no thread or descriptor left behind', async () => {
  for (let i = 0; i < 3; i++) {
    const s = new engine.Session({ target: 'file://' + path.join(tmp, `race${i}.mp4`), targetType: 'testsrc',
      size: '320x240', audio: 'none' });
    const started = s.start();
    const stop1 = s.stop(); // before start has resolved
    const stop2 = s.stop(); // and again
    await Promise.allSettled([started, stop1, stop2]);
    assert.strictEqual(s.isRunning(), false);
  }
  // Stop from inside a stats callback.
  const s = new engine.Session({ target: 'file://' + path.join(tmp, 'cb.mp4'), targetType: 'testsrc',
    size: '320x240', audio: 'none' });
  const stopped = new Promise((r) => s.once('stopped', r));
  s.once('stats', () => { s.stop(); s.stop(); });
  await s.start();
  await Promise.race([stopped, sleep(10000).then(() => { throw new Error('never stopped'); })]);
  assert.ok(duration(path.join(tmp, 'cb.mp4')) > 0.5);
  const now = await settled();
  assert.ok(now.threads <= baseline.threads && now.fds <= baseline.fds,
    `threads/fds ${JSON.stringify(now)} vs ${JSON.stringify(baseline)}`);
});
