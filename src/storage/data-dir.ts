// DATA_DIR as the operator gives it: a path that may not exist yet, may be a
// file, may sit on a read-only volume or belong to another user. Whatever is
// wrong with it is found before anything is written there and reported as one
// line naming the path, what is wrong and what to do (a DataDirError, which
// the CLI prints like bad configuration: no stack trace, exit 1); a directory
// this process created on the way is removed again.
import { accessSync, constants, mkdirSync, rmdirSync, statSync } from 'node:fs';
import path from 'node:path';

/**
 * DATA_DIR cannot be used as it is; the message (one line) says which path,
 * what is wrong and what to do. The setting's fault, or the directory's, or
 * another process's: the CLI reports it as bad configuration of DATA_DIR.
 */
export class DataDirError extends Error {
  readonly dataDir: string;
  constructor(dataDir: string, message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'DataDirError';
    this.dataDir = dataDir;
  }
}

/**
 * Makes sure `dataDir` (an absolute path) is a directory this process can
 * create files in: creates it and its missing parents, one at a time (Node's
 * recursive mkdir never returns on a path under /proc), and checks an
 * existing one for write access. `files` (names inside dataDir) that exist
 * must be writable too: the lock and database files a process opens for
 * writing. Throws DataDirError; the directories it created before failing
 * are removed.
 */
export function ensureDataDir(dataDir: string, files: readonly string[] = []): void {
  const missing: string[] = [];
  for (let at = dataDir; ; at = path.dirname(at)) {
    let isDirectory: boolean;
    try {
      isDirectory = statSync(at).isDirectory();
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      // ENOTDIR: a component above is a file; the walk up finds which.
      if ((code === 'ENOENT' || code === 'ENOTDIR') && path.dirname(at) !== at) {
        missing.unshift(at);
        continue;
      }
      throw dataDirError(dataDir, error);
    }
    if (!isDirectory) {
      throw new DataDirError(
        dataDir,
        at === dataDir
          ? `${dataDir} is a file, not a directory: point DATA_DIR at a directory (or move the file away)`
          : `${dataDir} cannot be created: ${at} is a file, not a directory; point DATA_DIR at a path under a directory`,
      );
    }
    break;
  }
  const created: string[] = [];
  try {
    for (const dir of missing) {
      try {
        mkdirSync(dir);
        created.push(dir);
      } catch (error) {
        // Several processes may start on one new DATA_DIR at once (npm run
        // cluster): one made it, and it serves the others as well.
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST' || !statSync(dir).isDirectory()) throw error;
      }
    }
    // A directory that exists may still refuse new files (its mode, its
    // owner, a read-only mount): found here, before the database is touched.
    // As root, access() grants what root may do: only a read-only mount refuses.
    accessSync(dataDir, constants.R_OK | constants.W_OK | constants.X_OK);
    for (const file of files) {
      try {
        accessSync(path.join(dataDir, file), constants.R_OK | constants.W_OK);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      }
    }
  } catch (error) {
    for (const dir of created.reverse()) rmdirSync(dir);
    throw dataDirError(dataDir, error);
  }
}

/**
 * The DataDirError for a file-system error met while using `dataDir`: one
 * line naming the path the error names, what is wrong and what to do. An
 * error it cannot explain keeps its own message.
 */
export function dataDirError(dataDir: string, error: unknown): DataDirError {
  if (error instanceof DataDirError) return error;
  const { code, path: at = dataDir, syscall } = error as NodeJS.ErrnoException;
  const creating = syscall === 'mkdir';
  // Where the operator must act: the directory a new one is made in, else the path itself.
  const where = creating ? path.dirname(at) : at;
  const action = creating ? `cannot create ${at}` : at === dataDir ? `cannot write in ${at}` : `cannot write ${at}`;
  const line = (problem: string) =>
    new DataDirError(dataDir, `${at === dataDir ? '' : `${dataDir}: `}${action}: ${problem}`, error);
  const user = process.getuid === undefined ? 'this user' : `uid ${process.getuid()}`;
  switch (code) {
    case 'EACCES':
    case 'EPERM':
      return line(
        `permission denied for ${user}; give it write access to ${where} (chown or chmod), or point DATA_DIR at a directory it can write`,
      );
    case 'EROFS':
      return line(
        `${where} is on a read-only file system; point DATA_DIR at a writable directory (a writable volume in a container)`,
      );
    case 'ENOSPC':
    case 'EDQUOT':
      return line(
        `no space left on the file system of ${where} (or quota exceeded); free some, or point DATA_DIR at another volume`,
      );
    case 'ENOENT':
      // Its parent exists (the walk up stopped there), yet nothing can be created in it: /proc, /sys and their kind.
      return line(`${where} takes no new files (${(error as Error).message}); point DATA_DIR at a directory on a disk`);
    default:
      return line(`${(error as Error).message}; point DATA_DIR at a directory this process can write`);
  }
}

/**
 * Runs `use` (which reads or writes files in `dataDir`) once ensureDataDir
 * found the directory usable, and turns a file-system error it meets (a
 * full disk, a file of another owner) into the DataDirError that explains it.
 */
export async function inDataDir<T>(dataDir: string, use: () => Promise<T>): Promise<T> {
  ensureDataDir(dataDir);
  try {
    return await use();
  } catch (error) {
    throw typeof (error as NodeJS.ErrnoException).code === 'string' && (error as NodeJS.ErrnoException).syscall
      ? dataDirError(dataDir, error)
      : error;
  }
}
