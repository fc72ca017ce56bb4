'use strict';
// Live control of a running session against real parts: Xvfb with castline-testkit's moving
// content and a real X window, recordings read back with ffprobe, and a headless Chromium
// viewer (crates/castline-cli/tests/browser/peer.mjs) watching while the source changes.
const { test, before, after } = require('node:test');
const assert = require('node:assert');
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const engine = require('..');

const { root, testkit, sleep, movingScreen } = require('./fixtures.js');
const browserDir = path.join(root, 'crates/castline-cli/tests/browser');
const haveBrowser = fs.existsSync(path.join(browserDir, 'node_modules/playwright-core'))
  && fs.existsSync('/usr/bin/chromium');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'castline-control-'));
const children = [];

before(() => movingScreen(700, children));

after(() => { for (const c of children) c.kill('SIGKILL'); });

function probeJson(file, args) {
  return JSON.parse(execFileSync('ffprobe', ['-v', 'error', ...args, '-of', 'json', file]).toString());
}

// Every video frame's presentation time and size, decoded.
function frames(file) {
  return probeJson(file, ['-select_streams', 'v:0', '-show_entries', 'frame=pts_time,width,height'])
    .frames.map((f) => ({ t: Number(f.pts_time), w: f.width, h: f.height }));
}

function duration(file) {
  return Number(probeJson(file, ['-show_entries', 'format=duration']).format.duration);
}

function maxGap(fs_) {
  let gap = 0;
  for (let i = 1; i < fs_.length; i++) gap = Math.max(gap, fs_[i].t - fs_[i - 1].t);
  return gap;
}

/** A testkit window; resolves with its X id once it is mapped. */
function openWindow(args) {
  return new Promise((resolve, reject) => {
    const p = spawn(testkit, ['window', ...args], { env: process.env });
    children.push(p);
    readline.createInterface({ input: p.stdout }).once('line', (l) => resolve(parseInt(l, 16)));
    p.on('error', reject);
    p.on('exit', (code) => reject(new Error('testkit window exited ' + code)));
  });
}

test('addOutput / removeOutput while recording: the second file holds that interval, the first every frame', async () => {
  const a = path.join(tmp, 'a.mp4');
  const b = path.join(tmp, 'b.mp4');
  const s = new engine.Session({ target: 'file://' + a, targetType: 'primary', fps: 30,
    keyframeInterval: 2, bitrate: 3_000_000 });
  const events = [];
  const errors = [];
  const stats = [];
  s.on('event', (e) => events.push(e));
  s.on('error', (e) => errors.push(e));
  s.on('stats', (st) => stats.push(st));
  const t0 = Date.now();
  await s.start();
  await sleep(3000);
  const id = await s.addOutput('file://' + b);
  const added = Date.now();
  assert.strictEqual(typeof id, 'number');
  await sleep(1500);
  const mid = stats[stats.length - 1];
  assert.deepStrictEqual(mid.outputs.map((o) => o.id).sort(), [0, id].sort(), JSON.stringify(mid.outputs));
  await sleep(1500);
  const removing = Date.now();
  await s.removeOutput(id);
  // Finalized when removeOutput resolves: a plain MP4 that plays.
  const bFrames = frames(b);
  const bSpan = (removing - added) / 1000;
  assert.ok(Math.abs(duration(b) - bSpan) <= 0.3, `b.mp4 lasts ${duration(b)} s, was added for ${bSpan} s`);
  assert.ok(Math.abs(bFrames.length - bSpan * 30) <= 9, `${bFrames.length} frames in b.mp4 over ${bSpan} s`);
  assert.ok(maxGap(bFrames) < 0.05, `gap ${maxGap(bFrames)} s in b.mp4`);

  // Bad arguments: a classified rejection, and nothing changes.
  const rejects = async (p, code) => assert.rejects(p, (e) => {
    assert.strictEqual(e.code, code, `${e.code}: ${e.message}`);
    return true;
  });
  await rejects(s.removeOutput(id), 'invalid_option'); // already removed
  await rejects(s.removeOutput(0), 'invalid_option'); // the last output: stop() instead
  await rejects(s.addOutput('bogus://x'), 'invalid_option');
  await rejects(s.addOutput('file://' + a), 'invalid_option'); // already recorded
  await rejects(s.setBitrate(1), 'invalid_option');
  await rejects(s.setFps(1000), 'invalid_option');
  await rejects(s.setAudioMuted(true), 'invalid_option'); // no audio in this session
  await rejects(s.setSource({ targetType: 'window', targetId: 0x7ffffff }), 'capture_failed');
  await rejects(s.setSource({ targetType: 'nonsense' }), 'invalid_option');
  const rerated = Date.now();
  await s.setBitrate(1_000_000);
  await s.setFps(15);
  await sleep(2500);
  const low = stats[stats.length - 1];
  assert.ok(low.fps > 12 && low.fps < 18, `fps ${low.fps} after setFps(15)`);
  assert.ok(low.bitrateMbps < 1.6, `${low.bitrateMbps} Mbit/s after setBitrate(1e6)`);
  await s.stop();
  const total = (Date.now() - t0) / 1000;
  assert.deepStrictEqual(errors, []);
  assert.deepStrictEqual(events.map((e) => e.name).filter((n) => n !== 'stopping'),
    ['started', 'output_added', 'output_removed', 'bitrate_changed', 'fps_changed']);
  // The first recording: no frame lost while the other came and went.
  const aFrames = frames(a);
  assert.ok(Math.abs(duration(a) - total) < 1.0, `a.mp4 ${duration(a)} s of a ${total} s run`);
  const cut = (rerated - t0) / 1000 - 0.3;
  const before15 = aFrames.filter((f) => f.t < cut);
  assert.ok(maxGap(before15) < 0.05, `gap ${maxGap(before15)} s in a.mp4 before setFps`);
  assert.ok(before15.length >= cut * 30 - 8, `${before15.length} frames in a.mp4's first ${cut} s`);
  await rejects(s.addOutput('file://' + b), 'not_running');
});

test('setSource from the screen to a window and back while a Chromium viewer watches and a recording runs',
  { skip: !haveBrowser && 'no Chromium or playwright-core (scripts/setup.sh installs them)' },
  async () => {
    const win = await openWindow(['--title', 'shared-window', '--size', '640x480', '--color', 'ff0000',
      '--at', '200,100']);
    const rec = path.join(tmp, 'rec.mp4');
    const token = 'control-test-token';
    const s = new engine.Session({ target: 'serve://127.0.0.1:0', token, targetType: 'primary',
      fps: 30, bitrate: 3_000_000 });
    const events = [];
    const errors = [];
    s.on('event', (e) => events.push(e));
    s.on('error', (e) => errors.push(e));
    await s.start();
    // 'started' comes through its own native queue: it may follow the resolved start().
    for (let i = 0; i < 100 && !events.some((e) => e.name === 'started'); i++) await sleep(20);
    const url = (events.find((e) => e.name === 'started') || {}).detail;
    assert.ok(url && url.startsWith('http://127.0.0.1:'), String(url));
    await s.addOutput('file://' + rec);
    const recAdded = Date.now();
    const plan = { steps: [
      { op: 'open', id: 'v', url },
      { op: 'wait_frames', id: 'v', n: 30, timeout_ms: 15000 },
      { op: 'monitor', id: 'v', seconds: 11 },
    ] };
    const peer = spawn('node', [path.join(browserDir, 'peer.mjs'), JSON.stringify(plan)],
      { cwd: browserDir, env: process.env });
    const lines = [];
    let stderr = '';
    peer.stderr.on('data', (d) => { stderr += d; });
    const done = new Promise((resolve) => peer.on('close', resolve));
    const rl = readline.createInterface({ input: peer.stdout });
    let switched = null;
    rl.on('line', (l) => {
      const r = JSON.parse(l);
      lines.push(r);
      if (r.op === 'wait_frames' && r.ok !== false) {
        // The viewer is watching the screen: switch to the window, then back.
        switched = (async () => {
          await sleep(3000);
          const toWindow = Date.now();
          await s.setSource({ targetType: 'window', targetId: win });
          await sleep(4000);
          const toScreen = Date.now();
          await s.setSource({ targetType: 'primary' });
          return { toWindow, toScreen };
        })();
      }
    });
    await done;
    assert.ok(switched, JSON.stringify(lines) + stderr);
    const { toWindow, toScreen } = await switched;
    await s.stop();
    assert.deepStrictEqual(errors, []);
    const mon = lines.find((r) => r.op === 'monitor');
    assert.ok(mon && mon.ok, JSON.stringify(lines) + stderr);
    const series = mon.series; // [unix_ms, framesDecoded, width, height]
    const sizeAt = (t0, t1) => new Set(series.filter(([t]) => t >= t0 && t < t1).map(([, , w, h]) => `${w}x${h}`));
    // The viewer's frame size follows the source (within a second of each switch).
    assert.deepStrictEqual([...sizeAt(series[0][0], toWindow)], ['1280x720'], JSON.stringify(series));
    assert.deepStrictEqual([...sizeAt(toWindow + 1000, toScreen)], ['640x480'], JSON.stringify(series));
    assert.deepStrictEqual([...sizeAt(toScreen + 1000, Infinity)], ['1280x720'], JSON.stringify(series));
    // No stall over 500 ms: framesDecoded keeps growing throughout.
    let lastChange = series[0][0];
    let stall = 0;
    for (let i = 1; i < series.length; i++) {
      if (series[i][1] > series[i - 1][1]) lastChange = series[i][0];
      stall = Math.max(stall, series[i][0] - lastChange);
    }
    assert.ok(stall <= 500, `viewer stalled ${stall} ms around the source changes`);
    // The recording kept its size: every decoded frame 1280x720, and no gap from a second
    // before the first switch on (before it, launching Chromium can starve the encoder).
    const rf = frames(rec);
    assert.deepStrictEqual([...new Set(rf.map((f) => `${f.w}x${f.h}`))], ['1280x720']);
    const around = rf.filter((f) => f.t >= (toWindow - recAdded) / 1000 - 1);
    assert.ok(around.length > 30 * 6, `${around.length} frames in the recording after the switch`);
    assert.ok(maxGap(around) < 0.1, `gap ${maxGap(around)} s in the recording around the switches`);
    assert.deepStrictEqual(events.map((e) => e.name).filter((n) => n.endsWith('_changed')),
      ['source_changed', 'source_changed']);
  });
