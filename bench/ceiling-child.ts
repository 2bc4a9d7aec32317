// Runs the embedded ceiling in its own process: PGlite's memory is not handed
// back to the system when it closes, and the app measured next would carry it
// in its RSS.
import { runCeiling, type CeilingOptions, type CeilingResult } from './ceiling.ts';

export type CeilingChildMessage =
  | { kind: 'progress'; t: number; perSecond: number }
  | { kind: 'done'; result: CeilingResult }
  | { kind: 'error'; message: string };

process.once('message', (options: Omit<CeilingOptions, 'onProgress'>) => {
  const send = (message: CeilingChildMessage) => process.send?.(message);
  runCeiling({ ...options, onProgress: (t, perSecond) => send({ kind: 'progress', t, perSecond }) }).then(
    (result) => send({ kind: 'done', result }),
    (error: unknown) =>
      send({ kind: 'error', message: error instanceof Error ? (error.stack ?? error.message) : String(error) }),
  );
});
