// Embedded PostgreSQL (PGlite): one single-user PostgreSQL in WebAssembly,
// persisted in DATA_DIR. PGlite serialises transactions itself, so a
// transaction here holds the whole database until it ends: keep them short.
import { execFile } from 'node:child_process';
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdtempSync,
  openSync,
  readdirSync,
  renameSync,
  rmdirSync,
  rmSync,
} from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { PGlite } from '@electric-sql/pglite';
import { DataDirError, dataDirError } from './data-dir.ts';
import { CREATED_DIR, CREATING_PREFIX, lockDataDir, type DataDirLock } from './data-dir-lock.ts';
import { assertSafeIntegers, parseInt8, type Database, type Row, type Transaction } from './database.ts';

/** PostgreSQL's type oid of int8 (bigint). */
const INT8 = 20;

/**
 * PostgreSQL's memory settings for a database that lives inside one
 * application process. Its defaults are a server's: 128 MB of shared buffers
 * and 64 MB for maintenance, reserved in the WebAssembly memory that never
 * shrinks. Orderflow's hot rows (stock, pending orders, the newest ids) fit
 * in far less, and the operating system's page cache keeps the data files
 * behind it: every page of shared buffers ends up resident, so 8 MB instead
 * of 16 MB is 8 MB less RSS (docs/performance.md, embedded memory).
 */
export const EMBEDDED_SETTINGS: Readonly<Record<string, string>> = {
  shared_buffers: '8MB',
  maintenance_work_mem: '16MB',
  temp_buffers: '1MB',
  wal_buffers: '1MB',
};

const START_PARAMS = [
  ...PGlite.defaultStartParams,
  ...Object.entries(EMBEDDED_SETTINGS).flatMap(([name, value]) => ['-c', `${name}=${value}`]),
];

const INITDB_SCRIPT = fileURLToPath(new URL('./pglite-initdb.ts', import.meta.url));

/** What openPGlite and initEmbeddedDataDir tell their caller. */
export interface EmbeddedOpenEvents {
  /**
   * Called when the directory's lock is held and its database is about to be
   * created (its first start, tens of seconds): a command line says so, or it
   * looks hung. Not called for a database that exists, nor for a start that
   * is refused.
   */
  onCreate?: (dataDir: string) => void;
}

/**
 * Creates the embedded database's files in `dataDir` (PostgreSQL's initdb)
 * in a child process, when the directory holds none yet. initdb needs far
 * more memory than running the database does, and WebAssembly memory is
 * never handed back: done in the serving process, it would stay in its
 * resident memory for good (about 70 MB). Holds the directory's lock
 * (lockDataDir) while it works. A creation that was killed partway (SIGKILL,
 * power loss) left either nothing usable, which is removed and made again,
 * or a complete database, which is put in place (createFilesIfMissing).
 * Rejects with the child's output when it fails, with DataDirInUseError when
 * another process has the directory, and with DataDirError when it cannot be
 * used (see lockDataDir).
 */
export async function initEmbeddedDataDir(dataDir: string, events: EmbeddedOpenEvents = {}): Promise<void> {
  const lock = lockDataDir(dataDir);
  try {
    await createFilesIfMissing(dataDir, events);
  } finally {
    lock.release();
  }
}

/**
 * initEmbeddedDataDir's work, for a caller that holds the directory's lock
 * (the child is let in under it). A database in DATA_DIR is either absent
 * or complete: initdb writes into a new directory inside DATA_DIR
 * (CREATING_PREFIX, same file system, under the same lock, and needing no
 * write access above DATA_DIR), which becomes CREATED_DIR by one rename
 * once initdb has closed the database cleanly and every file and directory
 * in it is on disk (fsync here: PGlite runs PostgreSQL with fsync off, -F). Its
 * entries are then renamed into DATA_DIR with PG_VERSION last: PG_VERSION
 * is what makes a directory a database, to PGlite and to this function.
 * A kill at any point leaves a creating directory (removed by the next
 * start, which creates the database again) or CREATED_DIR (whose move the
 * next start finishes). Migrations are not part of it: each runs in its own
 * transaction, which PostgreSQL's recovery undoes when a kill cuts it short.
 */
async function createFilesIfMissing(dataDir: string, events: EmbeddedOpenEvents): Promise<void> {
  try {
    finishOrDiscardCreation(dataDir);
  } catch (error) {
    throw dataDirError(dataDir, error);
  }
  if (existsSync(path.join(dataDir, 'PG_VERSION'))) return;
  events.onCreate?.(dataDir);
  let creating: string;
  try {
    creating = mkdtempSync(path.join(dataDir, CREATING_PREFIX));
  } catch (error) {
    throw dataDirError(dataDir, error);
  }
  try {
    await promisify(execFile)(process.execPath, [INITDB_SCRIPT, creating], { timeout: 120_000 });
  } catch (error) {
    try {
      rmSync(creating, { recursive: true, force: true, maxRetries: 3 });
    } catch {
      // initdb's failure is the one to report; the next start removes what is left (finishOrDiscardCreation).
    }
    const { stderr, message } = error as { stderr?: string; message: string };
    throw new Error(`creating the embedded database in ${dataDir} failed: ${stderr?.trim() || message}`, {
      cause: error,
    });
  }
  try {
    syncTree(creating);
    renameSync(creating, path.join(dataDir, CREATED_DIR));
    syncDirectory(dataDir);
    moveCreatedIntoPlace(dataDir);
  } catch (error) {
    throw dataDirError(dataDir, error);
  }
}

/**
 * What a killed creation left in `dataDir` (whose lock this process holds):
 * its creating directories are removed (an orphaned initdb child that still
 * writes in one fails, and never puts anything in place: only its parent
 * does), and a CREATED_DIR, complete and on disk, is moved into place.
 */
function finishOrDiscardCreation(dataDir: string): void {
  for (const name of readdirSync(dataDir)) {
    if (name.startsWith(CREATING_PREFIX)) {
      rmSync(path.join(dataDir, name), { recursive: true, force: true, maxRetries: 3 });
    }
  }
  if (existsSync(path.join(dataDir, CREATED_DIR))) moveCreatedIntoPlace(dataDir);
}

/** Renames CREATED_DIR's entries into dataDir, PG_VERSION last, each step on disk before the next; then removes it. */
function moveCreatedIntoPlace(dataDir: string): void {
  const created = path.join(dataDir, CREATED_DIR);
  for (const name of readdirSync(created)) {
    if (name !== 'PG_VERSION') renameSync(path.join(created, name), path.join(dataDir, name));
  }
  syncDirectory(created);
  syncDirectory(dataDir);
  if (existsSync(path.join(created, 'PG_VERSION'))) {
    renameSync(path.join(created, 'PG_VERSION'), path.join(dataDir, 'PG_VERSION'));
    syncDirectory(created);
    syncDirectory(dataDir);
  }
  rmdirSync(created);
  syncDirectory(dataDir);
}

/** fsyncs every file and directory under `dir`, and `dir` itself. */
function syncTree(dir: string): void {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const at = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      syncTree(at);
    } else if (entry.isFile()) {
      const fd = openSync(at, 'r');
      try {
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
    }
  }
  syncDirectory(dir);
}

/** fsyncs a directory: the names created, renamed or removed in it are on disk once it returns. */
function syncDirectory(dir: string): void {
  // Windows opens no directory as a file (EISDIR/EPERM) and keeps its names durable without it.
  if (process.platform === 'win32') return;
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Creates the embedded database's files in `dir` (absent or empty) and
 * closes it cleanly. For the initdb child (pglite-initdb.ts); the caller
 * holds the lock of the DATA_DIR that `dir` is in.
 */
export async function createDatabaseFiles(dir: string): Promise<void> {
  const db = await PGlite.create(`file://${dir}`, { startParams: START_PARAMS });
  await db.close();
}

/**
 * Opens the embedded database: in memory when `dataDir` is undefined (no
 * lock, nothing kept), else in `dataDir`, created first if it is new
 * (initEmbeddedDataDir). A directory is open in one process at a time: this
 * one holds its lock until close(), and rejects with DataDirInUseError
 * naming the directory and its holder's pid when another process has it,
 * and with DataDirError when the directory cannot be used or its database
 * does not start (see lockDataDir).
 */
export async function openPGlite(dataDir: string | undefined, options: EmbeddedOpenEvents = {}): Promise<Database> {
  let lock: DataDirLock | undefined;
  if (dataDir !== undefined) lock = lockDataDir(dataDir);
  let db: PGlite;
  try {
    if (dataDir !== undefined) await createFilesIfMissing(dataDir, options);
    // int8 is read as on PostgreSQL (parseInt8): a number, or refused if a number cannot hold it exactly.
    db = await PGlite.create(dataDir === undefined ? undefined : `file://${dataDir}`, {
      parsers: { [INT8]: parseInt8 },
      startParams: START_PARAMS,
    }).catch((error: unknown) => {
      if (dataDir === undefined) throw error;
      // PostgreSQL stopping while it opens the files (a PANIC) reaches here as
      // WebAssembly's abort(), with no more to say than its stack.
      throw new DataDirError(
        dataDir,
        `the embedded database in ${dataDir} does not start (${String(error)}): its files may be damaged ` +
          '(two processes wrote to them, or the disk filled up); restore DATA_DIR from a backup',
        error,
      );
    });
  } catch (error) {
    lock?.release();
    throw error;
  }
  const run = async <T extends Row>(target: Pick<PGlite, 'query'>, text: string, params?: readonly unknown[]) =>
    assertSafeIntegers((await target.query<T>(text, params as unknown[] | undefined)).rows);
  return {
    kind: 'pglite',
    concurrentTransactions: false,
    query: (text, params) => run(db, text, params),
    transaction: async <T>(fn: (tx: Transaction) => Promise<T>) => {
      // Nothing to save here (no round trips), but commit() keeps its
      // meaning: once it resolved, the transaction has committed whatever fn
      // does next, as on PostgreSQL.
      let committed = false;
      let lateError: { error: unknown } | undefined;
      // The first statement error, and whether fn's own error is what ended the transaction.
      let failed: { error: unknown } | undefined;
      let fnThrew = false;
      try {
        const result = await db.transaction(async (tx) => {
          let committing = false;
          const scoped: Transaction = {
            query: <R extends Row>(text: string, params?: readonly unknown[]) =>
              committing
                ? Promise.reject(new Error('the transaction is committing: it takes no more statements'))
                : run<R>(tx, text, params).catch((error: unknown) => {
                    failed ??= { error };
                    throw error;
                  }),
            commit: async <const P extends readonly unknown[]>(last: P) => {
              if (committing) throw new Error('commit() was called twice');
              committing = true;
              const settled = await Promise.allSettled(last);
              const rejected = settled.find((s) => s.status === 'rejected');
              // The first statement that failed, not one it aborted (25P02) or a promise built on it.
              if (failed || rejected) throw failed ? failed.error : rejected!.reason;
              committed = true;
              return settled.map((s) => (s as PromiseFulfilledResult<unknown>).value) as {
                -readonly [K in keyof P]: Awaited<P[K]>;
              };
            },
          };
          try {
            return await fn(scoped);
          } catch (error) {
            if (!committed) {
              fnThrew = true;
              throw error;
            }
            lateError = { error };
            return undefined as T;
          }
        });
        if (lateError) throw lateError.error;
        return result;
      } catch (error) {
        // PGlite's COMMIT of a failed transaction says only that it rolled back: the statement's error says why.
        throw !fnThrew && !lateError && failed ? failed.error : error;
      }
    },
    exec: async (script) => {
      await db.exec(script);
    },
    close: async () => {
      try {
        await db.close();
      } finally {
        lock?.release();
      }
    },
  };
}
