'use strict';
// The recorder/streamer shims (the Ionia engine's API) against real parts: Xvfb with moving
// content, a private PulseAudio daemon playing a tone, nginx-rtmp, files and the live stream
// read back with ffprobe. The script body is written the way that API's own tests are.
const { test, before, after } = require('node:test');
const assert = require('node:assert');
const { spawn, execFileSync, execFile } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const engine = require('..');

const { sleep, movingScreen } = require('./fixtures.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'castline-compat-'));
const children = [];
let rtmpPort;

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

async function waitFor(cond, ms, what) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return;
    await sleep(50);
  }
  throw new Error('timed out waiting for ' + what);
}

before(async () => {
  await movingScreen(500, children);

  // PulseAudio: 'desktop' is the null sink's monitor, 'mic' a second null sink's monitor.
  const pulseDir = path.join(tmp, 'pulse');
  fs.mkdirSync(pulseDir);
  const sock = path.join(pulseDir, 'native');
  fs.writeFileSync(path.join(pulseDir, 'default.pa'),
    `load-module module-native-protocol-unix auth-anonymous=1 socket=${sock}\n`
    + 'load-module module-null-sink sink_name=speakers\nset-default-sink speakers\n'
    + 'load-module module-null-sink sink_name=micsink\nset-default-source micsink.monitor\n');
  const penv = { ...process.env, XDG_RUNTIME_DIR: pulseDir, HOME: pulseDir };
  children.push(spawn('pulseaudio', ['-n', '--daemonize=no', '--exit-idle-time=-1',
    '--disallow-exit', '--use-pid-file=no', '-F', path.join(pulseDir, 'default.pa')],
  { stdio: 'ignore', env: penv }));
  await waitFor(() => fs.existsSync(sock), 10000, 'PulseAudio');
  process.env.PULSE_SERVER = 'unix:' + sock;
  children.push(spawn('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-re', '-f', 'lavfi', '-i',
    'sine=frequency=440:sample_rate=48000', '-f', 'pulse', '-device', 'speakers', 'tone'],
  { stdio: 'ignore', env: { ...penv, PULSE_SERVER: process.env.PULSE_SERVER } }));

  rtmpPort = await freePort();
  const ndir = path.join(tmp, 'nginx');
  fs.mkdirSync(ndir);
  fs.writeFileSync(path.join(ndir, 'nginx.conf'),
    'load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\n'
    + `daemon off; master_process off; pid ${ndir}/nginx.pid; error_log ${ndir}/error.log;\n`
    + 'events { worker_connections 64; }\n'
    + `rtmp { server { listen 127.0.0.1:${rtmpPort}; access_log off; application live { live on; } } }\n`);
  children.push(spawn('nginx', ['-p', ndir, '-e', path.join(ndir, 'error.log'), '-c',
    path.join(ndir, 'nginx.conf')], { stdio: 'ignore' }));
  let up = false;
  for (let i = 0; i < 100 && !up; i++) {
    up = await new Promise((r) => {
      const c = net.connect(rtmpPort, '127.0.0.1', () => { c.end(); r(true); });
      c.on('error', () => r(false));
    });
    if (!up) await sleep(50);
  }
  assert.ok(up, 'nginx-rtmp did not start');
  await sleep(500);
});

after(() => { for (const c of children.reverse()) c.kill('SIGKILL'); });

function streams(target) {
  return JSON.parse(execFileSync('ffprobe', ['-v', 'error', '-show_entries',
    'stream=codec_type,codec_name,width,height:format=duration', '-of', 'json', target]).toString());
}

test('VideoAudioStreamer to nginx-rtmp and VideoAudioRecorder beside it, as that API is used', async () => {
  const rtmpUrl = `rtmp://127.0.0.1:${rtmpPort}/live/compat-key`;
  const outPath = path.join(tmp, 'recorder.mp4');
  const fps = 30;
  const videoBitrate = 3_000_000;
  const audioBitrate = 192_000;
  const useNvenc = true; // "prefer hardware": none here, so x264
  const audioMode = 'both';

  const recorder = new engine.VideoAudioRecorder();
  const streamer = new engine.VideoAudioStreamer();
  assert.strictEqual(recorder.initialize(outPath, fps, videoBitrate, useNvenc, audioBitrate, audioMode), true,
    String(recorder.getLastError()));
  assert.strictEqual(streamer.initialize(rtmpUrl, fps, videoBitrate, useNvenc, audioBitrate, audioMode), true,
    String(streamer.getLastError()));
  assert.strictEqual(recorder.isRunning(), false);
  assert.strictEqual(recorder.start(), true, String(recorder.getLastError()));
  assert.strictEqual(streamer.start(), true, String(streamer.getLastError()));
  assert.strictEqual(streamer.isRunning(), true);
  assert.strictEqual(streamer.getCodecName(), 'libx264');
  assert.strictEqual(recorder.getCodecName(), 'libx264');

  // Read the stream back from nginx while it runs.
  const live = new Promise((resolve) => {
    setTimeout(() => execFile('ffprobe', ['-v', 'error', '-rw_timeout', '5000000', '-show_entries',
      'stream=codec_type,codec_name,width,height', '-of', 'json', rtmpUrl], (e, out) => resolve(e ? String(e) : out)), 3000);
  });

  await sleep(5000);
  const s5 = streamer.getStatistics();
  assert.ok(s5.videoPackets > 0, JSON.stringify(s5));
  assert.ok(s5.audioPackets > 0, JSON.stringify(s5));
  assert.strictEqual(s5.audioPacketsDropped, 0);
  const r5 = recorder.getStatistics();
  assert.ok(r5.videoPackets > 100 && r5.audioPackets > 100 && r5.videoFrames >= r5.videoPackets,
    JSON.stringify(r5));
  await sleep(3000);
  assert.strictEqual(streamer.isConnected(), true, JSON.stringify(streamer.getStatistics().outputs));
  assert.strictEqual(streamer.isBackpressure(), false);
  const probed = JSON.parse(await live);
  assert.deepStrictEqual(probed.streams.map((x) => x.codec_name).sort(), ['aac', 'h264'], JSON.stringify(probed));

  assert.strictEqual(streamer.stop(), true);
  assert.strictEqual(recorder.stop(), true);
  assert.strictEqual(streamer.isRunning(), false);
  assert.strictEqual(streamer.isConnected(), false);

  // The recording has video and audio and lasts the run.
  const rec = streams(outPath);
  const kinds = Object.fromEntries(rec.streams.map((x) => [x.codec_type, x]));
  assert.strictEqual(kinds.video.codec_name, 'h264');
  assert.deepStrictEqual([kinds.video.width, kinds.video.height], [1280, 720]);
  assert.strictEqual(kinds.audio.codec_name, 'aac');
  const d = Number(rec.format.duration);
  assert.ok(d > 7.5 && d < 10, `recording lasts ${d} s`);

  // Bad arguments: false, with the reason.
  const bad = new engine.VideoAudioStreamer();
  assert.strictEqual(bad.initialize('/tmp/not-a-url.mp4', 30, 1e6, false, 128000, 'desktop'), false);
  assert.strictEqual(bad.getLastError().code, 'invalid_option');
  assert.strictEqual(bad.initialize(rtmpUrl, 30, 1e6, false, 128000, 'speakers'), false);
  assert.strictEqual(bad.start(), false);
  const refused = new engine.VideoAudioStreamer();
  const closedPort = await freePort();
  assert.strictEqual(refused.initialize(`rtmp://127.0.0.1:${closedPort}/live/x`, 30, 1e6, false, 128000, 'desktop'), true);
  assert.strictEqual(refused.start(), false);
  assert.strictEqual(refused.getLastError().code, 'connection_refused', String(refused.getLastError()));
  assert.strictEqual(refused.isRunning(), false);
});

test('setAudioMuted silences the track without ending it, and unmuting brings the sound back', async () => {
  const file = path.join(tmp, 'muted.mp4');
  const s = new engine.Session({ target: 'file://' + file, targetType: 'primary', fps: 30,
    captureAudio: true, audioMode: 'system' });
  const events = [];
  s.on('event', (e) => events.push(e.name));
  const t0 = Date.now();
  await s.start();
  // A PulseAudio monitor stream delivers its first samples ~1.5 s after it opens (measured).
  await sleep(3500);
  const mutedAt = (Date.now() - t0) / 1000;
  await s.setAudioMuted(true);
  await sleep(2000);
  const unmutedAt = (Date.now() - t0) / 1000;
  await s.setAudioMuted(false);
  await sleep(2000);
  await s.stop();
  assert.deepStrictEqual(events.filter((n) => n.startsWith('audio_')), ['audio_muted', 'audio_unmuted']);
  const pcm = execFileSync('ffmpeg', ['-v', 'error', '-i', file, '-map', '0:a', '-ac', '1', '-ar', '48000',
    '-f', 'f32le', '-'], { maxBuffer: 64 << 20 });
  const x = new Float32Array(pcm.buffer, pcm.byteOffset, pcm.length / 4);
  const rms = (a, b) => {
    let sum = 0;
    const i0 = Math.floor(a * 48000);
    const i1 = Math.min(x.length, Math.floor(b * 48000));
    for (let i = i0; i < i1; i++) sum += x[i] * x[i];
    return Math.sqrt(sum / Math.max(1, i1 - i0));
  };
  // The mixer runs ~60 ms behind real time: leave half a second around each switch.
  const before = rms(2.0, mutedAt - 0.5);
  const muted = rms(mutedAt + 0.5, unmutedAt - 0.5);
  const after = rms(unmutedAt + 0.5, x.length / 48000 - 0.3);
  assert.ok(before > 0.05 && after > 0.05, `tone before ${before}, after ${after}`);
  assert.ok(muted < 1e-4, `muted rms ${muted}`);
  const d = JSON.parse(execFileSync('ffprobe', ['-v', 'error', '-show_entries', 'stream=codec_type,duration',
    '-of', 'json', file]).toString()).streams;
  const dur = Object.fromEntries(d.map((st) => [st.codec_type, Number(st.duration)]));
  assert.ok(Math.abs(dur.audio - dur.video) < 0.1, JSON.stringify(dur));
});
