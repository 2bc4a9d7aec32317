// One process at a time on an embedded DATA_DIR. Two processes that open the
// same PGlite files each keep their own copy of the database in memory and
// write over each other's: orders one of them accepted are lost, and the
// write-ahead log one of them leaves can make the next start abort
// (PostgreSQL's "could not locate a valid checkpoint record").
//
// The lock is an operating-system file lock (SQLite's, through node:sqlite,
// which Node ships): the kernel drops it when its process ends, however it
// ends, so a restart right after SIGKILL takes it at once, and holding it
// needs nothing from the event loop, which PGlite's statements block.
// A lock that lives in a directory's mtime (proper-lockfile and its kin)
// needs a timer to keep it fresh: a statement or a pause longer than its
// stale threshold gives it away to a second process, and after a crash every
// restart has to wait out that threshold first.
//
// A lock on a file is a lock on that file, not on its name: a lock file
// deleted under its holder is a new, free file to the next process that
// creates one. So a missing lock file is never read as "free" while the
// database may be open: the lock file is made only with a new database, or
// for one that PostgreSQL's own control file (global/pg_control, which cannot
// be deleted without deleting the database) records as shut down cleanly.
// A database being created (or whose creation was killed) is not new: its
// creating process may still be at work in the directories it leaves
// (CREATING_PREFIX, CREATED_DIR).
// Otherwise the start is refused, and the operator, who can tell whether a
// process still has the directory, recreates the file.
import { closeSync, existsSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { pathToFileURL } from 'node:url';
import { DataDirError, dataDirError, ensureDataDir } from './data-dir.ts';

/** The file the lock is taken on; never opened other than through SQLite (closing any other descriptor of it would drop the lock). */
export const LOCK_FILE = 'orderflow.lock';
/** Holds the process id of the lock's holder, for the error the next process prints. */
export const PID_FILE = 'orderflow.pid';
/**
 * A creation of the database in progress, or killed: initdb writes into a
 * directory of this name (plus a unique suffix) inside DATA_DIR, never into
 * DATA_DIR itself (pglite.ts, createFilesIfMissing).
 */
export const CREATING_PREFIX = '.orderflow-creating-';
/**
 * A database created completely and durably, whose entries are being moved
 * into DATA_DIR (PG_VERSION last, which makes it a database there).
 */
export const CREATED_DIR = '.orderflow-created';
/** PostgreSQL's control file, relative to its data directory (DATA_DIR itself). */
const CONTROL_FILE = path.join('global', 'pg_control');

/** SQLite's SQLITE_BUSY: another connection holds the lock. */
const SQLITE_BUSY = 5;

/** Another process (or another open in this one) has the directory; the message names it and, when known, the holder's pid. */
export class DataDirInUseError extends DataDirError {
  readonly holderPid: number | undefined;
  constructor(dataDir: string, holderPid: number | undefined) {
    super(
      dataDir,
      `${dataDir} is in use by another Orderflow process${holderPid === undefined ? '' : ` (pid ${holderPid})`}; ` +
        'the embedded database belongs to one process: stop that one first, or use another DATA_DIR',
    );
    this.name = 'DataDirInUseError';
    this.holderPid = holderPid;
  }
}

/** The lock file is gone while the database may be open: only the operator can tell whether a process still has it. */
export class LockFileMissingError extends DataDirError {
  constructor(dataDir: string) {
    const lockFile = path.join(dataDir, LOCK_FILE);
    super(
      dataDir,
      `${lockFile} was deleted, and the database in ${dataDir} was not shut down cleanly: an Orderflow process may ` +
        `still have it open (two would lose orders). Make sure none does (stop it), then recreate the lock file ` +
        `(touch ${lockFile}) and start again`,
    );
    this.name = 'LockFileMissingError';
  }
}

export interface DataDirLock {
  /** Lets the directory go; safe to call more than once. */
  release(): void;
}

/**
 * Takes the exclusive lock on `dataDir` (an absolute path; created if
 * missing, see ensureDataDir) for this process, at once or not at all.
 * `allowHolder`: a process id whose lock is as good as our own (the initdb
 * child passes its parent's); the lock then returned holds nothing.
 *
 * Throws DataDirInUseError when another process (or another open in this
 * one) holds it, LockFileMissingError when the lock file was deleted and the
 * database there is not known to be closed, and DataDirError when the
 * directory cannot be used (a file, read-only, no permission).
 */
export function lockDataDir(dataDir: string, options: { allowHolder?: number } = {}): DataDirLock {
  ensureDataDir(dataDir, [LOCK_FILE, PID_FILE, CONTROL_FILE]);
  const db = openLockFile(dataDir);
  try {
    // No journal file beside the lock file: nothing is ever written to it.
    db.exec('PRAGMA journal_mode = MEMORY');
    db.exec('BEGIN EXCLUSIVE');
  } catch (error) {
    db.close();
    if ((error as { errcode?: number }).errcode !== SQLITE_BUSY) throw dataDirError(dataDir, error);
    const holder = holderOf(dataDir);
    if (holder !== undefined && holder === options.allowHolder) return { release: () => {} };
    throw new DataDirInUseError(dataDir, holder);
  }
  // A lock file replaced under a running holder (deleted, then recreated by
  // hand or by another tool) is free to us. The holder's pid file is the
  // second guard: a live Orderflow process named there still has the
  // directory. (A pid left by a killed holder and reused by an unrelated
  // process is not one: its command line is checked.)
  const previous = holderOf(dataDir);
  if (previous !== undefined && previous !== process.pid && previous !== options.allowHolder && isOrderflow(previous)) {
    db.close();
    throw new DataDirInUseError(dataDir, previous);
  }
  const pidFile = path.join(dataDir, PID_FILE);
  try {
    writeFileSync(pidFile, `${process.pid}\n`);
  } catch (error) {
    db.close();
    throw dataDirError(dataDir, error);
  }
  let held = true;
  // A DatabaseSync that is garbage-collected is closed, which would drop the
  // lock: HELD keeps it referenced until release.
  HELD.add(db);
  return {
    release: () => {
      if (!held) return;
      held = false;
      // The pid file goes first: once the lock is free it may already be the
      // next holder's. Only our own: a process that started beside us on a
      // replaced lock file wrote its pid there, and the next start needs it.
      if (holderOf(dataDir) === process.pid) rmSync(pidFile, { force: true });
      HELD.delete(db);
      db.close();
    },
  };
}

const HELD = new Set<DatabaseSync>();

/**
 * Opens DATA_DIR's lock file through SQLite, creating it only where a new
 * one cannot be a second lock beside a held one: with no database in the
 * directory yet, or with one PostgreSQL recorded as shut down cleanly.
 */
function openLockFile(dataDir: string): DatabaseSync {
  const lockFile = path.join(dataDir, LOCK_FILE);
  if (!existsSync(lockFile)) {
    if (mayBeOpen(dataDir)) {
      const holder = holderOf(dataDir);
      throw holder !== undefined && holder !== process.pid && isOrderflow(holder)
        ? new DataDirInUseError(dataDir, holder)
        : new LockFileMissingError(dataDir);
    }
    try {
      // 'wx': of two processes that get here at once, one creates it; both then lock that one file.
      closeSync(openSync(lockFile, 'wx'));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw dataDirError(dataDir, error);
    }
  }
  // mode=rw: SQLite opens the file that is there and never creates one (a
  // deletion since the check above fails here instead of locking a new file).
  const url = pathToFileURL(lockFile);
  url.searchParams.set('mode', 'rw');
  try {
    return new DatabaseSync(url, { timeout: 0 });
  } catch (error) {
    throw existsSync(lockFile) ? dataDirError(dataDir, error) : new LockFileMissingError(dataDir);
  }
}

/** PostgreSQL's DBState values that mean its last process closed the database (DB_SHUTDOWNED, DB_SHUTDOWNED_IN_RECOVERY). */
const SHUT_DOWN = new Set([1, 2]);

/**
 * Whether a database in dataDir may be open in some process: it is being
 * created (a creation's directory is there: its process, or an orphaned
 * initdb child of it, may still write), or it exists (PG_VERSION) and its
 * control file does not say it was shut down cleanly.
 * PostgreSQL sets the state to "in production" when it opens the database and
 * to "shut down" when it closes it; a process that crashed leaves "in
 * production". The state is the 32-bit field after the system identifier and
 * two version numbers (ControlFileData), written little-endian by PGlite's
 * WebAssembly on every host. An unreadable or unknown control file counts as
 * open: refusing is the safe answer.
 */
function mayBeOpen(dataDir: string): boolean {
  if (readdirSync(dataDir).some((name) => name.startsWith(CREATING_PREFIX) || name === CREATED_DIR)) return true;
  if (!existsSync(path.join(dataDir, 'PG_VERSION'))) return false;
  try {
    const control = readFileSync(path.join(dataDir, CONTROL_FILE));
    return !(control.length >= 20 && SHUT_DOWN.has(control.readInt32LE(16)));
  } catch {
    return true;
  }
}

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
