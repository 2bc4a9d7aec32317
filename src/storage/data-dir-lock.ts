// One process at a time on an embedded DATA_DIR. Two processes that open the
// same PGlite files each keep their own copy of the database in memory and
// write over each other's: orders one of them accepted are lost.
//
// The lock is an operating-system file lock (SQLite's, through node:sqlite,
// which Node ships): the kernel drops it when its process ends, however it
// ends, so a restart right after SIGKILL takes it at once, and holding it
// needs nothing from the event loop, which PGlite's statements block.
// A lock that lives in a directory's mtime (proper-lockfile and its kin)
// needs a timer to keep it fresh: a statement or a pause longer than its
// stale threshold gives it away to a second process, and after a crash every
// restart has to wait out that threshold first.
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';

/** The file the lock is taken on; never opened other than through SQLite (closing any other descriptor of it would drop the lock). */
export const LOCK_FILE = 'orderflow.lock';
/** Holds the process id of the lock's holder, for the error the next process prints. */
export const PID_FILE = 'orderflow.pid';

/** SQLite's SQLITE_BUSY: another connection holds the lock. */
const SQLITE_BUSY = 5;

/** Another process (or another open in this one) has the directory; the message names it and, when known, the holder's pid. */
export class DataDirInUseError extends Error {
  readonly dataDir: string;
  readonly holderPid: number | undefined;
  constructor(dataDir: string, holderPid: number | undefined) {
    super(
      `${dataDir} is in use by another Orderflow process${holderPid === undefined ? '' : ` (pid ${holderPid})`}; ` +
        'the embedded database belongs to one process: stop that one first, or use another DATA_DIR',
    );
    this.name = 'DataDirInUseError';
    this.dataDir = dataDir;
    this.holderPid = holderPid;
  }
}

export interface DataDirLock {
  /** Lets the directory go; safe to call more than once. */
  release(): void;
}

/**
 * Takes the exclusive lock on `dataDir` (an existing directory) for this
 * process, at once or not at all. `allowHolder`: a process id whose lock is
 * as good as our own (the initdb child passes its parent's); the lock then
 * returned holds nothing.
 *
 * Throws DataDirInUseError when another process (or another open in this
 * one) holds it.
 */
export function lockDataDir(dataDir: string, options: { allowHolder?: number } = {}): DataDirLock {
  const db = new DatabaseSync(path.join(dataDir, LOCK_FILE), { timeout: 0 });
  try {
    // No journal file beside the lock file: nothing is ever written to it.
    db.exec('PRAGMA journal_mode = MEMORY');
    db.exec('BEGIN EXCLUSIVE');
  } catch (error) {
    db.close();
    if ((error as { errcode?: number }).errcode !== SQLITE_BUSY) throw error;
    const holder = holderOf(dataDir);
    if (holder !== undefined && holder === options.allowHolder) return { release: () => {} };
    throw new DataDirInUseError(dataDir, holder);
  }
  // The lock file can be deleted under a running holder (a cleanup job, a
  // hand tidying up), and then a new one locks a new file. The holder's pid
  // file is the second guard: a live Orderflow process named there still
  // has the directory. (A pid left by a killed holder and reused by an
  // unrelated process is not one: its command line is checked.)
  const previous = holderOf(dataDir);
  if (previous !== undefined && previous !== process.pid && previous !== options.allowHolder && isOrderflow(previous)) {
    db.close();
    throw new DataDirInUseError(dataDir, previous);
  }
  const pidFile = path.join(dataDir, PID_FILE);
  writeFileSync(pidFile, `${process.pid}\n`);
  let held = true;
  // A DatabaseSync that is garbage-collected is closed, which would drop the
  // lock: HELD keeps it referenced until release.
  HELD.add(db);
  return {
    release: () => {
      if (!held) return;
      held = false;
      // The pid file goes first: once the lock is free it may already be the next holder's.
      rmSync(pidFile, { force: true });
      HELD.delete(db);
      db.close();
    },
  };
}

const HELD = new Set<DatabaseSync>();

function holderOf(dataDir: string): number | undefined {
  try {
    const pid = Number(readFileSync(path.join(dataDir, PID_FILE), 'utf8').trim());
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** Whether pid is a live process running Orderflow's entry point (Linux: its command line; elsewhere: alive at all). */
function isOrderflow(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('main.ts');
  } catch {
    return true;
  }
}
