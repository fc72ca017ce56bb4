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

export class Session extends EventEmitter {
  constructor(options: ShareOptions);
  start(): Promise<void>;
  stop(): Promise<void>;
  forceKeyframe(): void;
  isRunning(): boolean;
  on(event: 'stats', listener: (stats: Stats) => void): this;
  on(event: 'error', listener: (error: CastlineError) => void): this;
  on(event: 'stopped', listener: () => void): this;
  on(event: 'event', listener: (event: EngineEvent) => void): this;
}
