'use strict';
// The recorder and streamer classes desktop recorders already call (the Ionia engine's
// synchronous JS API), as thin shims over Session: apps written against that API run
// unchanged. initialize() validates, start() blocks until the engine runs, stop() until the
// file is finalized; every call returns a boolean, and getLastError() says why one was false.

const path = require('node:path');

const AUDIO_MODES = { mic: 'mic', desktop: 'system', both: 'both' };

module.exports = (Session) => {
  class EngineShim {
    constructor(kind) {
      this._kind = kind;
      this._session = null;
      this._stats = null;
      this._lastError = null;
      this._codec = null;
    }

    _fail(code, message) {
      const e = new Error(message);
      e.code = code;
      e.fatal = true;
      this._lastError = e;
      return false;
    }

    /**
     * initialize(pathOrRtmpUrl, fps, videoBitrate, useNvenc, audioBitrate, audioMode):
     * `useNvenc` prefers a hardware encoder and falls back to x264; `audioMode` is
     * 'mic' | 'desktop' | 'both'. Returns false on bad arguments (see getLastError()).
     */
    initialize(target, fps = 30, videoBitrate = 5_000_000, useNvenc = false, audioBitrate = 128_000,
      audioMode = 'desktop') {
      if (this.isRunning()) return this._fail('already_running', 'stop() before initialize()');
      const audio = AUDIO_MODES[audioMode];
      if (!audio) {
        return this._fail('invalid_option', `audioMode '${audioMode}' (expected mic, desktop or both)`);
      }
      let t = String(target || '');
      if (this._kind === 'streamer') {
        if (!/^rtmps?:\/\//i.test(t)) return this._fail('invalid_option', 'the streamer takes an rtmp:// or rtmps:// URL');
      } else {
        if (!t) return this._fail('invalid_option', 'the recorder takes an output path');
        if (!t.startsWith('file://')) t = 'file://' + path.resolve(t);
      }
      try {
        this._session = new Session({
          target: t, targetType: 'primary', fps: Number(fps), bitrate: Number(videoBitrate),
          encoder: useNvenc ? 'auto' : 'x264', captureAudio: true, audioMode: audio,
          audioBitrate: Number(audioBitrate),
        });
      } catch (e) {
        this._session = null;
        this._lastError = e;
        return false;
      }
      this._session.on('stats', (s) => { this._stats = s; });
      this._session.on('error', (e) => { this._lastError = e; });
      this._stats = null;
      this._lastError = null;
      return true;
    }

    start() {
      if (!this._session) return this._fail('not_initialized', 'initialize() first');
      if (this.isRunning()) return false;
      try {
        this._session.startSync();
      } catch (e) {
        this._lastError = e;
        return false;
      }
      this._codec = this._session.codecName();
      return true;
    }

    stop() {
      if (!this._session) return false;
      this._session.stopSync();
      return true;
    }

    isRunning() { return !!this._session && this._session.isRunning(); }

    getCodecName() { return this._codec || (this._session && this._session.codecName()) || ''; }

    getLastError() { return this._lastError; }

    /**
     * Counters since start: videoFrames (captured), videoPackets (encoded), audioPackets,
     * videoPacketsDropped, audioPacketsDropped (always 0: audio is never dropped), and castline's
     * own stats beside them (fps, bitrateMbps, encodeMs, outputs, adaptation, …).
     */
    getStatistics() {
      const s = this._stats;
      if (!s) {
        return { videoFrames: 0, videoPackets: 0, audioPackets: 0, videoPacketsDropped: 0,
          audioPacketsDropped: 0 };
      }
      return {
        ...s,
        videoFrames: s.framesCaptured,
        videoPackets: s.framesEncoded,
        audioPackets: s.audioPackets,
        videoPacketsDropped: s.droppedEncodeQueue + s.droppedOutput,
        audioPacketsDropped: 0,
      };
    }
  }

  class VideoAudioRecorder extends EngineShim {
    constructor() { super('recorder'); }
  }

  class VideoAudioStreamer extends EngineShim {
    constructor() { super('streamer'); }

    _output() { return this._stats && this._stats.outputs[0]; }

    /** The RTMP server took the stream and it is flowing. */
    isConnected() {
      const o = this._output();
      return this.isRunning() && !!o && o.state === 'running' && o.bytes > 0;
    }

    /** The network is not draining: media waits in the stream buffer, or it is reconnecting. */
    isBackpressure() {
      const o = this._output();
      return !!o && (o.state === 'reconnecting' || o.bufferedMs > 500);
    }
  }

  return { VideoAudioRecorder, VideoAudioStreamer };
};
