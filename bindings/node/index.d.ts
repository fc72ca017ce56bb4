// Public API of the castline package. The option, stats and error shapes are generated from
// the Rust code into native.d.ts by `npm run build`.
import { EventEmitter } from 'node:events';
import type {
  AudioDevices, Display, EngineError, EngineEvent, ShareOptions, Stats, Window,
} from './native';

export type { AudioDevices, Display, EngineError, EngineEvent, ShareOptions, Stats, Window };

/** An Error with the classified fields of EngineError. */
export interface CastlineError extends Error { code: string; fatal: boolean }

export function listDisplays(): Display[];
export function listWindows(): Window[];
export function listAudio(): AudioDevices;
export function startScreenShare(
  options: ShareOptions,
  onError?: (error: CastlineError) => void,
  onStopped?: () => void,
  onStats?: (stats: Stats) => void,
): Promise<void>;
export function forceKeyframe(): void;
export function isScreenShareRunning(): boolean;
export function stopScreenShare(): Promise<void>;

/** Where `setSource` switches to. */
export interface SourceChoice {
  /** `primary`, `display`, `window` or `testsrc`. */
  targetType?: 'primary' | 'display' | 'window' | 'testsrc';
  /** Display index or window handle. */
  targetId?: number;
}

// The running screen share of startScreenShare, changed live (reject with code 'not_running'
// when none runs).
export function setSource(source: SourceChoice): Promise<void>;
export function addOutput(target: string, options?: { token?: string }): Promise<number>;
export function removeOutput(id: number): Promise<void>;
export function setBitrate(bps: number): Promise<void>;
export function setFps(fps: number): Promise<void>;
export function setAudioMuted(muted: boolean): Promise<void>;

export class Session extends EventEmitter {
  constructor(options: ShareOptions);
  start(): Promise<void>;
  stop(): Promise<void>;
  forceKeyframe(): void;
  isRunning(): boolean;
  /** start(), blocking until the engine runs. */
  startSync(): void;
  /** stop(), blocking until recordings are finalized. */
  stopSync(): void;
  /** The video encoder in use while running. */
  codecName(): string | null;
  /** Capture another display, window or testsrc; every target keeps running (live targets get
   * a keyframe and follow the new size, recordings keep theirs). Emits `source_changed`. */
  setSource(source: SourceChoice): Promise<void>;
  /** Open another target while running (file://…, rtmp://…, whip+https://…, serve://…,
   * livekit://…, rtp://…); resolves with its id. Emits `output_added`. */
  addOutput(target: string, options?: { token?: string }): Promise<number>;
  /** Stop one target (resolves once a recording is finalized). Emits `output_removed`. */
  removeOutput(id: number): Promise<void>;
  /** Video bitrate, bit/s, between `minBitrate` and the bitrate the session started with. */
  setBitrate(bps: number): Promise<void>;
  /** Highest frame rate encoded, 1 up to the rate the session started with. */
  setFps(fps: number): Promise<void>;
  /** Silence the audio track (it keeps running) or bring the sound back. */
  setAudioMuted(muted: boolean): Promise<void>;
  on(event: 'stats', listener: (stats: Stats) => void): this;
  on(event: 'error', listener: (error: CastlineError) => void): this;
  on(event: 'stopped', listener: () => void): this;
  on(event: 'event', listener: (event: EngineEvent) => void): this;
}

/** Counters of the recorder/streamer shims (castline's Stats fields beside them). */
export interface EngineStatistics extends Partial<Stats> {
  videoFrames: number;
  videoPackets: number;
  audioPackets: number;
  videoPacketsDropped: number;
  audioPacketsDropped: number;
}

/** The Ionia engine's recorder API, over Session (synchronous calls, boolean results). */
export class VideoAudioRecorder {
  constructor();
  initialize(outputPath: string, fps?: number, videoBitrate?: number, useNvenc?: boolean,
    audioBitrate?: number, audioMode?: 'mic' | 'desktop' | 'both'): boolean;
  start(): boolean;
  stop(): boolean;
  isRunning(): boolean;
  getStatistics(): EngineStatistics;
  getCodecName(): string;
  /** Why the last call returned false (castline extension). */
  getLastError(): CastlineError | null;
}

/** The Ionia engine's RTMP streamer API, over Session. */
export class VideoAudioStreamer {
  constructor();
  initialize(rtmpUrl: string, fps?: number, videoBitrate?: number, useNvenc?: boolean,
    audioBitrate?: number, audioMode?: 'mic' | 'desktop' | 'both'): boolean;
  start(): boolean;
  stop(): boolean;
  isRunning(): boolean;
  isConnected(): boolean;
  isBackpressure(): boolean;
  getStatistics(): EngineStatistics;
  getCodecName(): string;
  getLastError(): CastlineError | null;
}
