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
// Otherwise the start is refused, and the operator recreates the file.
//
// Neither the lock file nor the pid file is proof that the directory is free:
// both can be deleted, and a lock file recreated by hand is a new, free lock
// beside the one a running holder still has. What a running holder cannot
// shed is its open files: SQLite keeps the lock file it locked open (deleted,
// /proc shows it as `<DATA_DIR>/orderflow.lock (deleted)`), and PGlite its
// database files. So every lock, and every refusal for a missing lock file,
// first looks in /proc for another process with a file in DATA_DIR open
// (openersOf), and such a process keeps the directory, whatever the files
// say. /proc shows the processes of this pid namespace only, and their open
// files only to their own user and root: beyond those (another user, another
// container on a shared volume) the lock file and the control file remain
// the only guard, and a system without /proc has only them.
import {
  closeSync,
  existsSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
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

/**
 * Another process (or another open in this one) has the directory; the
 * message names it and, when known, the holder's pid. `opener`: a process
 * that has a file in the directory open (found in /proc) and does not run
 * Orderflow; the message then names it by its command and that file.
 */
export class DataDirInUseError extends DataDirError {
  readonly holderPid: number | undefined;
  constructor(dataDir: string, holderPid: number | undefined, opener?: { command: string; file: string }) {
    super(
      dataDir,
      opener === undefined
        ? `${dataDir} is in use by another Orderflow process${holderPid === undefined ? '' : ` (pid ${holderPid})`}; ` +
            'the embedded database belongs to one process: stop that one first, or use another DATA_DIR'
        : `${dataDir} is in use by another process (pid ${holderPid}, ${opener.command}), which has ${opener.file} ` +
            'open; the embedded database belongs to one process: stop that one first (or let it finish), ' +
            'or use another DATA_DIR',
    );
    this.name = 'DataDirInUseError';
    this.holderPid = holderPid;
  }
}

/**
 * The lock file is gone while the database may be open, and no process this
 * one can see has it open: only the operator can tell whether one it cannot
 * see (another user's, another container's) does. `scan`: what openersOf
 * found out; undefined where there is no /proc to look in.
 */
export class LockFileMissingError extends DataDirError {
  constructor(dataDir: string, scan?: OpenersScan) {
    const lockFile = path.join(dataDir, LOCK_FILE);
    const unseen =
      scan === undefined
        ? 'an Orderflow process may still have it open'
        : scan.unreadable === 0
          ? 'no process here has a file in it open (checked in /proc), but one in another container sharing the ' +
            'directory could'
          : `no process of ${userName()} has a file in it open (checked in /proc; ${scan.unreadable} processes of ` +
            'other users could not be), but one of those, or one in another container sharing the directory, could';
    super(
      dataDir,
      `${lockFile} was deleted, and the database in ${dataDir} was not shut down cleanly: ${unseen} ` +
        `(two would lose orders). Make sure none does (stop it), then recreate the lock file ` +
        `(touch ${lockFile}) and start again` +
        (scan === undefined ? '' : '; the start checks again for processes with the directory open'),
    );
    this.name = 'LockFileMissingError';
  }
}

function userName(): string {
  return process.getuid === undefined ? 'this user' : `uid ${process.getuid()}`;
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
 * one) holds it, or has a file in it open (openersOf: Linux's /proc), LockFileMissingError when the lock file was deleted and the
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
    // A holder whose pid file was deleted is named by the files it has open.
    throw holder === undefined
      ? inUseError(dataDir, openersOf(dataDir, options))
      : new DataDirInUseError(dataDir, holder);
  }
  // A lock file replaced under a running holder (deleted, then recreated by
  // hand or by another tool) is free to us. The holder's pid file is the
  // second guard: a live Orderflow process named there still has the
  // directory. (A pid left by a killed holder and reused by an unrelated
  // process is not one: its command line is checked.)
  // Both can be gone (the operator deleted them, then made a new lock file):
  // a process that has a file in DATA_DIR open has the directory. Files this
  // process has open too are not counted (see openersOf): this lock file,
  // which processes racing for it have open as well, and inherited ones (an
  // output log in DATA_DIR that its parent writes to).
  const scan = openersOf(dataDir, options);
  if (scan.opener !== undefined) {
    db.close();
    throw inUseError(dataDir, scan);
  }
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
      const scan = openersOf(dataDir);
      if (scan.opener !== undefined) throw inUseError(dataDir, scan);
      const holder = holderOf(dataDir);
      throw holder !== undefined && holder !== process.pid && isOrderflow(holder)
        ? new DataDirInUseError(dataDir, holder)
        : new LockFileMissingError(dataDir, scan.ran ? scan : undefined);
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

/** What openersOf found: `opener`, the first other process with a file in DATA_DIR open. */
interface OpenersScan {
  /** Whether /proc could be read at all (false: no /proc, as on macOS). */
  ran: boolean;
  opener?: { pid: number; file: string };
  /** Processes whose open files this user may not see (another user's, without root). */
  unreadable: number;
}

/**
 * Looks in /proc for another process that has a file inside `dataDir` open
 * (its descriptors' targets, compared below DATA_DIR's real path; a file
 * deleted since shows as `<path> (deleted)`). Left out: this process, its
 * ancestors (npm, a shell, a process manager: what started this process
 * does not hold the database, yet may write its own log there, as npm does
 * with HOME in DATA_DIR), `allowHolder`, and files this process has open
 * itself, compared by device and inode. A process's working directory is
 * not an open file and does not count (a shell in DATA_DIR writes nothing).
 * Of several openers, an Orderflow process is the one named. Takes a few
 * milliseconds for a few hundred processes; only what this user may read is
 * seen.
 */
function openersOf(dataDir: string, options: { allowHolder?: number } = {}): OpenersScan {
  let pids: string[];
  let inside: string;
  try {
    pids = readdirSync('/proc').filter((name) => /^[0-9]+$/.test(name));
    inside = realpathSync(dataDir) + path.sep;
  } catch {
    return { ran: false, unreadable: 0 };
  }
  const skipped = new Set([process.pid, ...ancestors()]);
  if (options.allowHolder !== undefined) skipped.add(options.allowHolder);
  let own: Set<string> | undefined;
  let unreadable = 0;
  let opener: OpenersScan['opener'];
  for (const name of pids) {
    const pid = Number(name);
    if (skipped.has(pid)) continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch (error) {
      // ENOENT: it ended meanwhile. EACCES: another user's (or not dumpable).
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') unreadable++;
      continue;
    }
    for (const fd of fds) {
      let file: string;
      let identity: string;
      try {
        file = readlinkSync(`/proc/${pid}/fd/${fd}`).replace(/ \(deleted\)$/, '');
        if (!file.startsWith(inside)) continue;
        const { dev, ino } = statSync(`/proc/${pid}/fd/${fd}`);
        identity = `${dev}:${ino}`;
      } catch {
        continue; // closed meanwhile
      }
      own ??= ownFiles();
      if (own.has(identity)) continue;
      if (isOrderflow(pid)) return { ran: true, opener: { pid, file }, unreadable };
      opener ??= { pid, file };
      break;
    }
  }
  return { ran: true, opener, unreadable };
}

/** The process ids above this one, its parent first (Linux: /proc/<pid>/stat's fourth field). */
function ancestors(): number[] {
  const found: number[] = [];
  for (let pid = process.ppid; pid > 1 && found.length < 64;) {
    found.push(pid);
    try {
      // The command (second field) may hold spaces and parentheses: the fields after its last ')' are plain.
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      pid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    } catch {
      break;
    }
  }
  return found;
}

/** Device and inode of every file this process has open. */
function ownFiles(): Set<string> {
  const files = new Set<string>();
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const { dev, ino } = statSync(`/proc/self/fd/${fd}`);
      files.add(`${dev}:${ino}`);
    } catch {
      // the descriptor readdir itself used, closed by now
    }
  }
  return files;
}

/** The DataDirInUseError for what openersOf found (an Orderflow process by its pid; any other by its command and file too). */
function inUseError(dataDir: string, scan: OpenersScan): DataDirInUseError {
  const { opener } = scan;
  if (opener === undefined) return new DataDirInUseError(dataDir, undefined);
  if (isOrderflow(opener.pid)) return new DataDirInUseError(dataDir, opener.pid);
  let command: string;
  try {
    command = readFileSync(`/proc/${opener.pid}/cmdline`, 'utf8').replaceAll('\0', ' ').trim().slice(0, 80);
  } catch {
    command = 'ended since';
  }
  return new DataDirInUseError(dataDir, opener.pid, { command, file: opener.file });
}
