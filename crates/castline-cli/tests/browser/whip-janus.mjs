// Test fixture: a small WHIP front end for a real Janus VideoRoom (Janus speaks only its own
// JSON API; no WHIP server for it is packaged in a reachable registry).
//
//   node whip-janus.mjs PORT TOKEN [JANUS_URL]
//
// - POST /whip (Bearer TOKEN, SDP offer) → Janus session + VideoRoom publisher in room 1234
//   (joinandconfigure with the offer) → 201, Janus's answer, Location /whip/SESSION
// - DELETE /whip/SESSION → the Janus session is destroyed
// - GET /subscriber.html → a page that subscribes to the room's publisher through
//   POST /subscribe (Janus's offer) and POST /subscribe/SESSION (the page's answer)
// Prints one JSON line per event on stdout ("listening", "published", "deleted", …).
import { createServer } from 'node:http';

const [port, token, janus = 'http://127.0.0.1:18088/janus'] = process.argv.slice(2);
const ROOM = 1234;
const log = (o) => process.stdout.write(JSON.stringify(o) + '\n');
let tx = 0;
const sessions = new Map(); // session id → { handle, publisherId }
let lastPublisher = null;

async function api(path, body) {
  const r = await fetch(janus + path, { method: 'POST',
    body: JSON.stringify({ transaction: 't' + (++tx), ...body }) });
  return r.json();
}

// Long-poll the session until an event for `handle` with a jsep (or an error) arrives.
async function waitEvent(session, handle, want) {
  const deadline = Date.now() + 10000;
  while (Date.now() < deadline) {
    const r = await fetch(`${janus}/${session}?maxev=5&rid=${Date.now()}`);
    const evs = [].concat(await r.json());
    for (const e of evs) {
      if (e.sender === handle && want(e)) return e;
    }
  }
  throw new Error('no event from Janus');
}

async function keepAlive(session) {
  while (sessions.has(session)) {
    await api('/' + session, { janus: 'keepalive' }).catch(() => {});
    await new Promise((r) => setTimeout(r, 15000));
  }
}

async function newHandle() {
  const s = await api('', { janus: 'create' });
  if (s.janus !== 'success') throw new Error('create: ' + JSON.stringify(s));
  const session = s.data.id;
  const h = await api('/' + session, { janus: 'attach', plugin: 'janus.plugin.videoroom' });
  return { session, handle: h.data.id };
}

async function publish(offer) {
  const { session, handle } = await newHandle();
  sessions.set(session, { handle });
  keepAlive(session);
  await api(`/${session}/${handle}`, { janus: 'message',
    body: { request: 'joinandconfigure', room: ROOM, ptype: 'publisher', display: 'castline',
            audio: true, video: true },
    jsep: { type: 'offer', sdp: offer } });
  const ev = await waitEvent(session, handle, (e) => e.jsep || (e.plugindata && e.plugindata.data.error));
  if (!ev.jsep) throw new Error('publish refused: ' + JSON.stringify(ev.plugindata.data));
  lastPublisher = ev.plugindata.data.id;
  sessions.get(session).publisherId = lastPublisher;
  log({ event: 'published', session, publisher: lastPublisher,
        video: ev.jsep.sdp.includes('m=video'), audio: ev.jsep.sdp.includes('m=audio') });
  return { session, answer: ev.jsep.sdp };
}

async function subscribe() {
  if (!lastPublisher) throw new Error('nobody publishes');
  const { session, handle } = await newHandle();
  sessions.set(session, { handle });
  keepAlive(session);
  await api(`/${session}/${handle}`, { janus: 'message',
    body: { request: 'join', room: ROOM, ptype: 'subscriber', streams: [{ feed: lastPublisher }] } });
  const ev = await waitEvent(session, handle, (e) => e.jsep || (e.plugindata && e.plugindata.data.error));
  if (!ev.jsep) throw new Error('subscribe refused: ' + JSON.stringify(ev.plugindata.data));
  return { session, offer: ev.jsep.sdp };
}

const PAGE = `<!doctype html><html><body><video id="v" autoplay playsinline muted></video><script>
async function run() {
  window.gum = await navigator.mediaDevices.getUserMedia({ audio: true });
  const r = await fetch('/subscribe', { method: 'POST' });
  const { session, offer } = await r.json();
  const pc = new RTCPeerConnection({ iceServers: [] });
  window.whepPc = pc;
  const ms = new MediaStream();
  document.getElementById('v').srcObject = ms;
  pc.ontrack = (e) => ms.addTrack(e.track);
  await pc.setRemoteDescription({ type: 'offer', sdp: offer });
  await pc.setLocalDescription(await pc.createAnswer());
  await new Promise((res) => { if (pc.iceGatheringState === 'complete') res();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && res();
    setTimeout(res, 2000); });
  await fetch('/subscribe/' + session, { method: 'POST', body: pc.localDescription.sdp });
}
run().catch((e) => { document.title = 'error: ' + e; });
</script></body></html>`;

function body(req) {
  return new Promise((res) => { let b = ''; req.on('data', (c) => { b += c; }); req.on('end', () => res(b)); });
}

const server = createServer(async (req, res) => {
  try {
    if (req.method === 'POST' && req.url === '/whip') {
      if (req.headers.authorization !== 'Bearer ' + token) {
        log({ event: 'unauthorized' });
        res.writeHead(401).end();
        return;
      }
      const offer = await body(req);
      const { session, answer } = await publish(offer);
      res.writeHead(201, { 'Content-Type': 'application/sdp', Location: '/whip/' + session });
      res.end(answer);
    } else if (req.method === 'DELETE' && req.url.startsWith('/whip/')) {
      const session = Number(req.url.split('/')[2]);
      const known = sessions.delete(session);
      if (known) await api('/' + session, { janus: 'destroy' });
      log({ event: 'deleted', session, known });
      res.writeHead(known ? 200 : 404).end();
    } else if (req.method === 'GET' && req.url === '/subscriber.html') {
      res.writeHead(200, { 'Content-Type': 'text/html' }).end(PAGE);
    } else if (req.method === 'POST' && req.url === '/subscribe') {
      const s = await subscribe();
      res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify(s));
    } else if (req.method === 'POST' && req.url.startsWith('/subscribe/')) {
      const session = Number(req.url.split('/')[2]);
      const answer = await body(req);
      const { handle } = sessions.get(session);
      await api(`/${session}/${handle}`, { janus: 'message', body: { request: 'start', room: ROOM },
        jsep: { type: 'answer', sdp: answer } });
      log({ event: 'subscribed', session });
      res.writeHead(200).end();
    } else {
      res.writeHead(404).end();
    }
  } catch (e) {
    log({ event: 'error', url: req.url, error: String(e.message || e) });
    res.writeHead(502).end(String(e.message || e));
  }
});
server.listen(Number(port), '127.0.0.1', () => log({ event: 'listening', port: Number(port) }));
