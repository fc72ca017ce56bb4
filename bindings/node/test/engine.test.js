'use strict';
// The binding against real parts: Xvfb for the display list, the engine recording testsrc to
// MP4 files checked with ffprobe. Run by `npm test` (and by scripts/test.sh).
const { test, before, after } = require('node:test');
const assert = require('node:assert');
const { spawn, execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const engine = require('..');

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'castline-node-'));
let xvfb;

before(async () => {
  const display = ':' + (200 + (process.pid % 500));
  xvfb = spawn('Xvfb', [display, '-screen', '0', '1280x720x24', '-nolisten', 'tcp'], { stdio: 'ignore' });
  process.env.DISPLAY = display;
  for (let i = 0; i < 50; i++) {
    try { engine.listDisplays(); break; } catch (e) { await new Promise((r) => setTimeout(r, 100)); }
  }
});

after(() => { if (xvfb) xvfb.kill(); });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function probe(file, args) {
  return execFileSync('ffprobe', ['-v', 'error', ...args, '-of', 'json', file]).toString();
}

function streamInfo(file) {
  const j = JSON.parse(probe(file, ['-select_streams', 'v:0', '-count_frames',
    '-show_entries', 'stream=codec_name,width,height,nb_read_frames:format=duration']));
  return { ...j.streams[0], duration: Number(j.format.duration) };
}

// Top-level MP4 boxes. While recording the file is fragmented (ftyp, empty moov, moof+mdat
// pairs); a finalized recording is ftyp, moov, mdat with no fragments.
function topBoxes(file) {
  const b = require('node:fs').readFileSync(file);
  const boxes = [];
  for (let i = 0; i + 8 <= b.length;) {
    let size = b.readUInt32BE(i);
    if (size === 1 && i + 16 <= b.length) size = Number(b.readBigUInt64BE(i + 8));
    if (size < 8) break;
    boxes.push(b.toString('latin1', i + 4, i + 8));
    i += size;
  }
  return boxes;
}

function finalized(file) {
  const boxes = topBoxes(file);
  return !boxes.includes('moof') && boxes.indexOf('moov') >= 0
    && boxes.indexOf('moov') < boxes.indexOf('mdat');
}

function keyframeTimes(file) {
  const j = JSON.parse(probe(file, ['-select_streams', 'v:0', '-skip_frame', 'nokey',
    '-show_entries', 'frame=pts_time']));
  return j.frames.map((f) => Number(f.pts_time));
}

test('listDisplays reports the Xvfb screen', () => {
  const d = engine.listDisplays();
  assert.ok(d.length >= 1, JSON.stringify(d));
  assert.deepStrictEqual([d[0].width, d[0].height, d[0].x, d[0].y], [1280, 720, 0, 0]);
  assert.strictEqual(d.filter((x) => x.primary).length, 1);
  assert.strictEqual(typeof d[0].name, 'string');
});

test('listWindows returns window objects', () => {
  const w = engine.listWindows();
  assert.ok(Array.isArray(w));
  for (const x of w) {
    assert.strictEqual(typeof x.handle, 'number');
    assert.strictEqual(typeof x.title, 'string');
  }
});

test('listAudio lists devices, or says why it cannot', () => {
  try {
    const a = engine.listAudio();
    assert.ok(Array.isArray(a.sources) && Array.isArray(a.sinks) && Array.isArray(a.applications));
  } catch (e) {
    assert.strictEqual(e.code, 'audio_unavailable', String(e));
  }
});

test('records 3 s through the API, with stats and a forced keyframe', async () => {
  const file = path.join(tmp, 'api.mp4');
  const stats = [];
  const errors = [];
  let stopped = 0;
  await engine.startScreenShare(
    { target: 'file://' + file, targetType: 'testsrc', size: '640x360', fps: 30,
      keyframeInterval: 10, captureAudio: false },
    (e) => errors.push(e),
    () => { stopped += 1; },
    (s) => stats.push(s),
  );
  assert.strictEqual(engine.isScreenShareRunning(), true);
  await sleep(1500);
  engine.forceKeyframe();
  await sleep(1700);
  await engine.stopScreenShare();
  await sleep(100);
  assert.strictEqual(engine.isScreenShareRunning(), false);
  assert.strictEqual(stopped, 1);
  assert.deepStrictEqual(errors, []);
  assert.ok(stats.length >= 2, `${stats.length} stats callbacks`);
  const s = stats[stats.length - 1];
  assert.ok(s.fps > 25 && s.fps < 35, JSON.stringify(s));
  assert.ok(s.bitrateMbps > 0 && s.encodeMs > 0, JSON.stringify(s));
  assert.strictEqual(s.outputs.length, 1);
  assert.strictEqual(s.outputs[0].state, 'running');
  // A recording takes the main encode at its configured level; it does not adapt.
  assert.deepStrictEqual([s.adaptation.level, s.adaptation.width, s.adaptation.height],
    [0, 640, 360], JSON.stringify(s.adaptation));
  assert.strictEqual(s.outputs[0].targetKbps, undefined);
  const info = streamInfo(file);
  assert.deepStrictEqual([info.codec_name, info.width, info.height], ['h264', 640, 360]);
  assert.ok(info.duration > 2.8 && info.duration < 3.8, String(info.duration));
  // keyframeInterval is 10 s: the keyframe after the first is the forced one (~1.5 s).
  const keys = keyframeTimes(file);
  assert.strictEqual(keys.length, 2, JSON.stringify(keys));
  assert.ok(keys[1] > 1.2 && keys[1] < 2.2, JSON.stringify(keys));
  // Stopping again is harmless.
  await engine.stopScreenShare();
});

test('bad options reject with a code instead of crashing', async () => {
  const cases = [
    [{ target: 'ftp://example/x', targetType: 'testsrc' }, 'invalid_option'],
    [{ target: 'file:///tmp/x.mp4', targetType: 'testsrc', fps: 0 }, 'invalid_option'],
    [{ target: 'file:///tmp/x.mp4', targetType: 'window' }, 'invalid_option'],
    [{ target: 'file:///tmp/x.mp4', targetType: 'martian' }, 'invalid_option'],
    [{ target: 'file:///tmp/x.mp4', targetType: 'testsrc', size: '641x360' }, 'invalid_option'],
    [{ target: 'file:///tmp/x.mp4', targetType: 'window', targetId: 0x7ffffff }, 'capture_failed'],
    [{ target: 'rtmp://127.0.0.1:9/live/key', targetType: 'testsrc' }, 'connection_refused'],
  ];
  for (const [opts, code] of cases) {
    await assert.rejects(engine.startScreenShare(opts), (e) => {
      assert.strictEqual(e.code, code, `${JSON.stringify(opts)}: ${e.code} ${e.message}`);
      assert.strictEqual(typeof e.message, 'string');
      return true;
    });
    assert.strictEqual(engine.isScreenShareRunning(), false);
  }
  assert.throws(() => new engine.Session({ target: 'nope' }), (e) => e.code === 'invalid_option');
});

test('sessions run side by side and stop from their own callbacks', async () => {
  const a = new engine.Session({ target: path.join(tmp, 'a.mp4'), targetType: 'testsrc', size: '320x240' });
  const b = new engine.Session({ target: path.join(tmp, 'b.mp4'), targetType: 'testsrc', size: '320x240' });
  const done = (s) => new Promise((resolve) => s.on('stopped', resolve));
  const stoppedA = done(a);
  const stoppedB = done(b);
  // Stop from inside a stats callback, twice (idempotent).
  a.on('stats', () => { a.stop(); a.stop(); });
  b.on('stats', () => { b.stop(); });
  const events = [];
  a.on('event', (e) => events.push(e.name));
  await a.start();
  await b.start();
  await Promise.all([stoppedA, stoppedB]);
  assert.deepStrictEqual(events, ['started', 'stopping']);
  for (const f of ['a.mp4', 'b.mp4']) {
    const info = streamInfo(path.join(tmp, f));
    assert.ok(info.duration > 0.5, `${f}: ${info.duration}`);
  }
  await assert.rejects(a.stop().then(() => a.start()).then(() => a.start()), (e) => e.code === 'already_running');
  await a.stop();
});

function counts() {
  const fds = fs.readdirSync('/proc/self/fd').length;
  const threads = fs.readdirSync('/proc/self/task').length;
  const rss = Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]) / 1024;
  return { fds, threads, rss };
}

test('start/stop 20 times leaks no threads, descriptors or memory', async () => {
  const file = path.join(tmp, 'loop.mp4');
  const cycle = async () => {
    const s = new engine.Session({ target: file, targetType: 'testsrc', size: '320x240' });
    await s.start();
    await sleep(150);
    await s.stop();
  };
  // Warm up once: the first run loads FFmpeg's codecs and thread pools for good.
  await cycle();
  await sleep(300);
  const before = counts();
  for (let i = 0; i < 20; i++) await cycle();
  await sleep(500);
  if (global.gc) global.gc();
  const after = counts();
  assert.ok(after.threads <= before.threads + 1, `threads ${before.threads} → ${after.threads}`);
  assert.ok(after.fds <= before.fds + 2, `fds ${before.fds} → ${after.fds}`);
  assert.ok(after.rss - before.rss < 40, `RSS ${before.rss.toFixed(1)} → ${after.rss.toFixed(1)} MB`);
  assert.ok(streamInfo(file).duration > 0.05);
});

test('process exit finalizes a running recording', () => {
  const file = path.join(tmp, 'exit.mp4');
  const script = `
    const engine = require(${JSON.stringify(path.join(__dirname, '..'))});
    engine.startScreenShare({ target: ${JSON.stringify(file)}, targetType: 'testsrc', size: '320x240' })
      .then(() => setTimeout(() => process.exit(0), 2000));`;
  const r = spawnSync(process.execPath, ['-e', script], { timeout: 30000 });
  assert.strictEqual(r.status, 0, r.stderr.toString());
  const info = streamInfo(file);
  assert.ok(info.duration > 1.5, String(info.duration));
  // Finalized: a standard MP4, its index (moov) before the media (mdat), no fragments left.
  assert.ok(finalized(file), topBoxes(file).join(','));
});

test('a running session that is garbage-collected stops its engine and finalizes the file', () => {
  const file = path.join(tmp, 'gc.mp4');
  const script = `
    const fs = require('node:fs');
    const engine = require(${JSON.stringify(path.join(__dirname, '..'))});
    ${topBoxes.toString()}
    ${finalized.toString()}
    const moovFirst = () => {
      try { return finalized(${JSON.stringify(file)}); } catch (e) { return false; }
    };
    (async () => {
      let s = new engine.Session({ target: ${JSON.stringify(file)}, targetType: 'testsrc', size: '320x240' });
      await s.start();
      s = null;
      await new Promise((r) => setTimeout(r, 1500));
      for (let i = 0; i < 10 && !moovFirst(); i++) {
        global.gc();
        await new Promise((r) => setTimeout(r, 300));
      }
      console.log(moovFirst() ? 'finalized' : 'not finalized');
      process.exit(0);
    })();`;
  const r = spawnSync(process.execPath, ['--expose-gc', '-e', script], { timeout: 30000 });
  assert.strictEqual(r.stdout.toString().trim(), 'finalized', r.stderr.toString());
  assert.ok(streamInfo(file).duration > 0.1);
});

test('a serve:// session reports its viewer URL, which needs the token', async () => {
  const s = new engine.Session({ target: 'serve://127.0.0.1:0', targetType: 'testsrc',
    size: '320x240', token: 'node-test-token-1' });
  const started = new Promise((resolve) => s.on('event', (e) => { if (e.name === 'started') resolve(e); }));
  await s.start();
  const ev = await started;
  assert.match(ev.detail, /^http:\/\/127\.0\.0\.1:\d+\/\?token=node-test-token-1$/);
  const page = await fetch(ev.detail);
  assert.strictEqual(page.status, 200);
  assert.ok((await page.text()).includes('<video'));
  const denied = await fetch(ev.detail.replace('node-test-token-1', 'wrong'));
  assert.strictEqual(denied.status, 401);
  await s.stop();
  assert.strictEqual(s.isRunning(), false);
});

// LiveKit: the Electron screen-share call, unchanged in shape, into a real LiveKit server (built
// by scripts/setup.sh from the Go module proxy), checked by LiveKit's own Python client.
const livekitBin = process.env.CASTLINE_LIVEKIT_SERVER
  || path.join(os.homedir(), '.cache/castline/livekit-bin/server');
const haveLiveKit = fs.existsSync(livekitBin)
  && spawnSync('python3', ['-c', 'import livekit.rtc, livekit.api']).status === 0;
const LK_KEY = 'nodetest';
const LK_SECRET = 'node-test-secret-0123456789abcdefghij';

function freePort() {
  const net = require('node:net');
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
  });
}

async function startLiveKit() {
  const port = await freePort();
  const udp = await freePort();
  const dir = fs.mkdtempSync(path.join(tmp, 'livekit-'));
  const conf = path.join(dir, 'livekit.yaml');
  // Loopback only; a loopback STUN address so nothing asks a public STUN server.
  fs.writeFileSync(conf, [
    `port: ${port}`, 'bind_addresses: [127.0.0.1]', 'log_level: warn', 'rtc:',
    '  node_ip: 127.0.0.1', `  udp_port: ${udp}`, '  tcp_port: 0', '  use_external_ip: false',
    '  enable_loopback_candidate: true', '  stun_servers: ["127.0.0.1:3478"]',
    '  ips:', '    includes: [127.0.0.1/32]', 'keys:', `  ${LK_KEY}: ${LK_SECRET}`, ''].join('\n'));
  const proc = spawn(livekitBin, ['--config', conf], { stdio: 'ignore' });
  for (let i = 0; i < 150; i++) {
    try { if ((await fetch(`http://127.0.0.1:${port}/`)).ok) break; } catch (e) { /* starting */ }
    await sleep(100);
  }
  return { proc, port, url: `ws://127.0.0.1:${port}` };
}

function livekitToken(room, identity, canPublish) {
  return execFileSync('python3', ['-c',
    'import sys; from livekit import api; print(api.AccessToken(sys.argv[1], sys.argv[2])'
    + '.with_identity(sys.argv[3]).with_grants(api.VideoGrants(room_join=True, room=sys.argv[4],'
    + ' can_publish=sys.argv[5] == "1")).to_jwt())',
    LK_KEY, LK_SECRET, identity, room, canPublish ? '1' : '0']).toString().trim();
}

test('startScreenShare({ serverUrl, token }) publishes a screen share into a LiveKit room',
  { skip: !haveLiveKit && 'no LiveKit server or Python client (scripts/setup.sh installs them)' },
  async () => {
    const lk = await startLiveKit();
    // Moving content on the shared screen (a still one would be zero-hertz: keep-alives only).
    const { testkit } = require('./fixtures.js');
    const content = fs.existsSync(testkit)
      ? spawn(testkit, ['content', '--fps', '30'], { stdio: 'ignore', env: process.env }) : null;
    await sleep(1500);
    try {
      const token = livekitToken('node-room', 'node-publisher', true);
      const errors = [];
      const stats = [];
      let stopped = false;
      await engine.startScreenShare(
        { serverUrl: lk.url, token, targetType: 'primary',
          targetId: undefined, fps: 30, bitrate: 2_000_000, showCursor: true,
          captureAudio: false, audioMode: 'system' },
        (error) => errors.push(error), () => { stopped = true; },
        (s) => stats.push(s));
      const script = path.join(__dirname, '../../../crates/castline-cli/tests/livekit/subscriber.py');
      // Asynchronously: the engine's stats callbacks need the event loop meanwhile.
      const sub = await new Promise((resolve) => {
        const p = spawn('python3', [script, '--url', lk.url, '--api-key', LK_KEY,
          '--api-secret', LK_SECRET, '--room', 'node-room', '--seconds', '5']);
        let stdout = '';
        let stderr = '';
        p.stdout.on('data', (d) => { stdout += d; });
        p.stderr.on('data', (d) => { stderr += d; });
        p.on('close', () => resolve({ stdout, stderr }));
      });
      const summary = sub.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l))
        .find((e) => e.event === 'summary');
      assert.ok(summary, sub.stdout + sub.stderr);
      assert.strictEqual(summary.video_source, 'SOURCE_SCREENSHARE');
      assert.ok(summary.frames >= 60, JSON.stringify(summary));
      assert.deepStrictEqual(Object.keys(summary.sizes), ['1280x720']);
      const last = stats[stats.length - 1];
      assert.ok(last.fps > 20, JSON.stringify(last));
      assert.ok(last.bitrateMbps > 0.1, JSON.stringify(last));
      assert.deepStrictEqual(errors, []);
      await engine.stopScreenShare();
      // onStopped comes a turn after stop() resolves (after the events queued before it).
      for (let i = 0; i < 50 && !stopped; i++) await sleep(20);
      assert.ok(stopped);

      // A token without the publish grant: a classified rejection, nothing started.
      const viewer = livekitToken('node-room', 'node-viewer', false);
      await assert.rejects(engine.startScreenShare({ serverUrl: lk.url, token: viewer, targetType: 'testsrc' }),
        (e) => e.code === 'publish_rejected' && !e.message.includes(viewer));
      const forged = token.slice(0, -4) + (token.endsWith('AAAA') ? 'BBBB' : 'AAAA');
      await assert.rejects(engine.startScreenShare({ serverUrl: lk.url, token: forged, targetType: 'testsrc' }),
        (e) => e.code === 'publish_rejected' && !e.message.includes('eyJ'));
      await assert.rejects(engine.startScreenShare({ serverUrl: lk.url, targetType: 'testsrc' }),
        (e) => e.code === 'invalid_option');
    } finally {
      lk.proc.kill('SIGKILL');
      if (content) content.kill();
    }
  });
