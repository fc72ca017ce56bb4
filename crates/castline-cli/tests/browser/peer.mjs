// Test fixture: drives Debian's headless Chromium as a WebRTC receiver for castline's tests.
//
//   node peer.mjs '<json plan>'
//
// The plan is {"steps": [...]}; each step's result is printed as one JSON line on stdout:
//   {"op":"open","id":"a","url":"http://…/?token=…"}   viewer page (own browser process)
//   {"op":"whep","id":"w","endpoint":"http://…/whep","token":"…"}
//                                   a page on another origin that only uses the WHEP endpoint
//   {"op":"wait_frames","id":"a","n":60,"timeout_ms":10000}   framesDecoded ≥ n
//   {"op":"wait_audio","id":"a","timeout_ms":10000,"energy":0.001}  totalAudioEnergy grows
//   {"op":"leave","id":"a"} / {"op":"join","id":"a"}   viewer page's signaling leave / join
//   {"op":"stats","id":"a"}   one getStats() summary
//   {"op":"latency","id":"a","seconds":30}   glass-to-glass: reads testsrc's embedded clock
//   "shared": true on "open" puts the page in one browser process shared by such pages
//   {"op":"close","id":"a"}   ({"op":"whep_delete","id":"w"} sends the WHEP DELETE first)
//   {"op":"monitor","id":"a","seconds":40}   getStats() every 100 ms: a series of
//                                   [unix_ms, framesDecoded, frameWidth, frameHeight] samples;
//                                   "latency": true adds every frame's testsrc-stamp latency
//   {"op":"watch","id":"a","seconds":60,"x":100,"y":100,"rgb":[255,0,0]}   for `seconds`:
//                                   every second [unix_ms, mean luma of the picture, video track
//                                   readyState, connectionState, framesDecoded]; and the first
//                                   presentation time (unix ms) at which pixel (x,y) shows rgb
//   {"op":"sleep","ms":1000}
import { createServer } from 'node:http';
import { chromium } from 'playwright-core';

const FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--allow-loopback-in-peer-connection', '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream', '--disable-features=WebRtcHideLocalIpsWithMdns',
  '--autoplay-policy=no-user-gesture-required',
];

const WHEP_PAGE = `<!doctype html><html><body><video id="v" autoplay playsinline muted></video>
<script>
async function whep(endpoint, token) {
  // Lets Chromium use loopback addresses (see shared facts).
  window.gum = await navigator.mediaDevices.getUserMedia({ audio: true });
  const pc = new RTCPeerConnection({ iceServers: [] });
  window.whepPc = pc;
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  const ms = new MediaStream();
  const v = document.getElementById('v');
  v.srcObject = ms;
  v.muted = false;
  pc.ontrack = (e) => ms.addTrack(e.track);
  await pc.setLocalDescription(await pc.createOffer());
  const r = await fetch(endpoint, { method: 'POST', body: pc.localDescription.sdp,
    headers: { 'Content-Type': 'application/sdp', 'Authorization': 'Bearer ' + token } });
  if (r.status !== 201) throw new Error('WHEP POST: HTTP ' + r.status);
  window.whepLocation = new URL(r.headers.get('Location'), endpoint).href;
  await pc.setRemoteDescription({ type: 'answer', sdp: await r.text() });
  return window.whepLocation;
}
async function whepDelete(token) {
  const r = await fetch(window.whepLocation, { method: 'DELETE',
    headers: { 'Authorization': 'Bearer ' + token } });
  window.whepPc.close();
  return r.status;
}
</script></body></html>`;

// The WHEP page comes from its own origin (another port), so CORS is exercised for real.
let whepServer = null;
async function whepOrigin() {
  if (!whepServer) {
    whepServer = createServer((req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/html' });
      res.end(WHEP_PAGE);
    });
    await new Promise((r) => whepServer.listen(0, '127.0.0.1', r));
  }
  return 'http://127.0.0.1:' + whepServer.address().port;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const pages = new Map();
let sharedBrowser = null;

// A page served from a namespace address (not loopback) is not a secure context, so it could not
// call getUserMedia; the tests' own origins are declared trustworthy.
async function launch(url) {
  const args = [...FLAGS];
  if (url && !/^http:\/\/(127\.|localhost)/.test(url)) {
    args.push('--unsafely-treat-insecure-origin-as-secure=' + new URL(url).origin);
  }
  return chromium.launch({ executablePath: '/usr/bin/chromium', args, headless: true });
}

async function stats(page) {
  return page.evaluate(async () => {
    const pc = (window.castline && window.castline.peerConnection()) || window.whepPc;
    if (!pc) return null;
    const out = { framesDecoded: 0, frameWidth: 0, frameHeight: 0, keyFramesDecoded: 0,
      audioEnergy: 0, audioSamples: 0, pliCount: 0, nackCount: 0, packetsLost: 0,
      videoCodec: null, audioCodec: null, state: pc.connectionState };
    const report = await pc.getStats();
    const codecs = {};
    report.forEach((s) => { if (s.type === 'codec') codecs[s.id] = s.mimeType; });
    report.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      if (s.kind === 'video') {
        out.framesDecoded = s.framesDecoded || 0;
        out.frameWidth = s.frameWidth || 0;
        out.frameHeight = s.frameHeight || 0;
        out.keyFramesDecoded = s.keyFramesDecoded || 0;
        out.pliCount = s.pliCount || 0;
        out.nackCount = s.nackCount || 0;
        out.retransmittedPackets = s.retransmittedPacketsReceived || 0;
        out.packetsLost += s.packetsLost || 0;
        out.videoCodec = codecs[s.codecId] || null;
      } else if (s.kind === 'audio') {
        out.audioEnergy = s.totalAudioEnergy || 0;
        out.audioSamples = s.totalSamplesReceived || 0;
        out.audioCodec = codecs[s.codecId] || null;
      }
    });
    return out;
  });
}

async function waitFor(page, timeoutMs, done) {
  const t0 = Date.now();
  let firstFrameMs = null;
  let s = null;
  while (Date.now() - t0 < timeoutMs) {
    s = await stats(page);
    if (s && s.framesDecoded > 0 && firstFrameMs === null) firstFrameMs = Date.now() - t0;
    if (s && done(s)) return { ok: true, ms: Date.now() - t0, firstFrameMs, ...s };
    await sleep(100);
  }
  return { ok: false, ms: Date.now() - t0, firstFrameMs, ...(s || {}) };
}

// Glass-to-glass latency: reads the capture time testsrc embeds in every frame (README:
// "testsrc timestamp format": cells of width/48 px, two rows of 48, MSB first, white = 1; bits
// 0–63 = capture time in µs since the UNIX epoch) from each displayed frame, and compares it with
// this machine's clock when the frame is presented (startStampReader below).
async function latency(page, seconds) {
  await page.evaluate(startStampReader);
  await sleep(seconds * 1000);
  const samples = (await page.evaluate(() => window.stampLatency)).map(([, ms]) => ms);
  samples.sort((a, b) => a - b);
  const q = (p) => (samples.length ? samples[Math.min(samples.length - 1, Math.floor(p * samples.length))] : null);
  return { samples: samples.length, p50: q(0.5), p95: q(0.95), max: samples.length ? samples[samples.length - 1] : null };
}

// Every displayed frame's glass-to-glass latency, as [unix_ms, ms] in window.stampLatency, kept
// running while a test sleeps or a monitor samples getStats.
function startStampReader() {
  const v = document.querySelector('video');
  const c = document.createElement('canvas');
  window.stampLatency = [];
  const onFrame = (now) => {
    const w = v.videoWidth;
    const cell = Math.floor(w / 48);
    if (cell > 0) {
      c.width = w; c.height = cell * 2;
      const ctx = c.getContext('2d', { willReadFrequently: true });
      ctx.drawImage(v, 0, 0, w, cell * 2, 0, 0, w, cell * 2);
      const px = ctx.getImageData(0, 0, w, cell * 2).data;
      let us = 0n;
      for (let bit = 0; bit < 64; bit++) {
        const x = (bit % 48) * cell + (cell >> 1);
        const y = Math.floor(bit / 48) * cell + (cell >> 1);
        const i = (y * w + x) * 4;
        const luma = 0.2126 * px[i] + 0.7152 * px[i + 1] + 0.0722 * px[i + 2];
        us = (us << 1n) | (luma > 128 ? 1n : 0n);
      }
      const shown = performance.timeOrigin + now;
      const ms = shown - Number(us) / 1000;
      if (ms > -50 && ms < 10000) window.stampLatency.push([Math.round(shown), Math.round(ms)]);
    }
    v.requestVideoFrameCallback(onFrame);
  };
  v.requestVideoFrameCallback(onFrame);
}

// Records in window.pixelMatchedAt the first presentation time (unix ms) at which pixel (x,y)
// of the video shows `rgb` (±40 per channel); window.pictureNow() gives the mean luma of the
// current picture and the video track's readyState.
function startPixelWatch({ x, y, rgb }) {
  const v = document.querySelector('video');
  const c = document.createElement('canvas');
  c.width = 64; c.height = 36;
  const ctx = c.getContext('2d', { willReadFrequently: true });
  window.pixelMatchedAt = null;
  window.pictureNow = () => {
    ctx.drawImage(v, 0, 0, 64, 36);
    const px = ctx.getImageData(0, 0, 64, 36).data;
    let sum = 0;
    for (let i = 0; i < px.length; i += 4) sum += 0.2126 * px[i] + 0.7152 * px[i + 1] + 0.0722 * px[i + 2];
    const tracks = v.srcObject ? v.srcObject.getVideoTracks() : [];
    return { luma: sum / (px.length / 4), track: tracks.length ? tracks[0].readyState : 'none' };
  };
  if (!rgb) return;
  const one = document.createElement('canvas');
  one.width = 1; one.height = 1;
  const octx = one.getContext('2d', { willReadFrequently: true });
  const onFrame = (now) => {
    octx.drawImage(v, x, y, 1, 1, 0, 0, 1, 1);
    const p = octx.getImageData(0, 0, 1, 1).data;
    if (window.pixelMatchedAt === null && Math.abs(p[0] - rgb[0]) < 40
        && Math.abs(p[1] - rgb[1]) < 40 && Math.abs(p[2] - rgb[2]) < 40) {
      window.pixelMatchedAt = Math.round(performance.timeOrigin + now);
    }
    v.requestVideoFrameCallback(onFrame);
  };
  v.requestVideoFrameCallback(onFrame);
}

async function step(s) {
  switch (s.op) {
    case 'open': {
      // "shared": one browser process for every page that asks (cheaper for many viewers).
      const browser = s.shared ? (sharedBrowser ||= await launch()) : await launch(s.url);
      const page = await browser.newPage();
      await page.addInitScript(() => {
        window.castlineBeforeConnect = async () => {
          window.gum = await navigator.mediaDevices.getUserMedia({ audio: true });
        };
      });
      const resp = await page.goto(s.url);
      pages.set(s.id, { browser, page });
      // Audio is only rendered (and its energy measured) when the element plays it.
      await page.evaluate(() => { const v = document.querySelector('video'); if (v) v.muted = false; });
      return { status: resp.status() };
    }
    case 'whep': {
      const browser = await launch();
      const page = await browser.newPage();
      await page.goto((await whepOrigin()) + '/player.html');
      pages.set(s.id, { browser, page });
      try {
        const location = await page.evaluate(([e, t]) => whep(e, t), [s.endpoint, s.token]);
        return { ok: true, location };
      } catch (e) {
        return { ok: false, error: String(e.message || e) };
      }
    }
    case 'wait_frames':
      return waitFor(pages.get(s.id).page, s.timeout_ms || 10000,
        (st) => st.framesDecoded >= (s.n || 60));
    case 'wait_audio': {
      const page = pages.get(s.id).page;
      const before = (await stats(page)) || { audioEnergy: 0 };
      return waitFor(page, s.timeout_ms || 10000,
        (st) => st.audioEnergy - before.audioEnergy >= (s.energy || 0.001));
    }
    case 'stats':
      return stats(pages.get(s.id).page);
    case 'leave':
      await pages.get(s.id).page.evaluate(() => window.castline.leave());
      return { ok: true };
    case 'join':
      await pages.get(s.id).page.evaluate(() => window.castline.join());
      return { ok: true };
    case 'whep_delete': {
      const status = await pages.get(s.id).page.evaluate((t) => whepDelete(t), s.token);
      return { status };
    }
    case 'latency':
      return latency(pages.get(s.id).page, s.seconds || 30);
    case 'monitor': {
      // The test correlates these wall-clock samples with when it capped the link.
      const page = pages.get(s.id).page;
      if (s.latency) await page.evaluate(startStampReader);
      const series = [];
      const end = Date.now() + (s.seconds || 30) * 1000;
      while (Date.now() < end) {
        const st = await stats(page);
        if (st) series.push([Date.now(), st.framesDecoded, st.frameWidth, st.frameHeight]);
        await sleep(100);
      }
      const latency = s.latency ? await page.evaluate(() => window.stampLatency) : undefined;
      return { ok: true, series, latency };
    }
    case 'watch': {
      const page = pages.get(s.id).page;
      await page.evaluate(startPixelWatch, { x: s.x || 0, y: s.y || 0, rgb: s.rgb || null });
      const samples = [];
      const end = Date.now() + (s.seconds || 30) * 1000;
      while (Date.now() < end) {
        const st = await stats(page);
        const pic = await page.evaluate(() => window.pictureNow());
        samples.push([Date.now(), pic.luma, pic.track, st ? st.state : null,
          st ? st.framesDecoded : 0]);
        await sleep(1000);
      }
      return { ok: true, samples, matched_at: await page.evaluate(() => window.pixelMatchedAt) };
    }
    case 'close': {
      const p = pages.get(s.id);
      pages.delete(s.id);
      if (p.browser === sharedBrowser) await p.page.close();
      else await p.browser.close();
      return { ok: true };
    }
    case 'sleep':
      await sleep(s.ms);
      return { ok: true };
    default:
      throw new Error('unknown op ' + s.op);
  }
}

const plan = JSON.parse(process.argv[2]);
let failed = false;
for (const s of plan.steps) {
  let result;
  try {
    result = await step(s);
  } catch (e) {
    result = { ok: false, error: String(e.message || e) };
    failed = true;
  }
  process.stdout.write(JSON.stringify({ op: s.op, id: s.id, ...result }) + '\n');
  if (failed) break;
}
for (const { browser } of pages.values()) await browser.close().catch(() => {});
if (sharedBrowser) await sharedBrowser.close().catch(() => {});
if (whepServer) whepServer.close();
process.exit(failed ? 1 : 0);
