// DATA_DIR as the operator gives it: a path that may not exist yet, may be a
// file, may sit on a read-only volume or belong to another user. Whatever is
// wrong with it is found before anything is written there and reported as one
// line naming the path, what is wrong and what to do (a DataDirError, which
// the CLI prints like bad configuration: no stack trace, exit 1); a directory
// this process created on the way is removed again.
import { accessSync, constants, lstatSync, mkdirSync, readlinkSync, rmdirSync, statfsSync, statSync } from 'node:fs';
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
      // A symbolic link whose target does not exist: mkdir cannot make it
      // (the link's name is taken), and only the operator knows which was meant.
      const target = code === 'ENOENT' ? danglingLinkTarget(at) : undefined;
      if (target !== undefined) {
        throw new DataDirError(
          dataDir,
          `${at === dataDir ? dataDir : `${dataDir} cannot be created: ${at}`} is a symbolic link to ${target}, ` +
            'which does not exist; create that directory, or point DATA_DIR at a directory that exists',
          error,
        );
      }
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
  // /proc, /sys and their kind are the kernel's views, not storage: no mode
  // or owner makes them take a database, whatever the error code says.
  const virtual = code === 'EACCES' || code === 'EPERM' || code === 'ENOENT' ? virtualFileSystem(where) : undefined;
  if (virtual !== undefined) {
    return line(
      `${where} is on ${virtual}, a view of the kernel that holds no files of its own (${(error as Error).message}); ` +
        'point DATA_DIR at a directory on a disk',
    );
  }
  switch (code) {
    case 'EACCES':
    case 'EPERM':
      // Root passes every mode check: what refuses root is the file system
      // itself (an immutable file or directory, a share that maps root to
      // nobody), which chown or chmod does not change.
      return process.getuid?.() === 0
        ? line(
            `permission denied even for root: the file system of ${where} refuses the write (an immutable ` +
              'attribute, chattr +i, or a network share that maps root to nobody); lift that, or point DATA_DIR at ' +
              'a directory on a writable disk',
          )
        : line(
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
      // Not a virtual file system (above), yet gone: removed while in use, or a file system that refuses to say why.
      return line(
        `${(error as Error).message}; check that ${where} exists and nothing removes it, or point DATA_DIR at a directory on a disk`,
      );
    default:
      return line(`${(error as Error).message}; point DATA_DIR at a directory this process can write`);
  }
}

/** Linux's magic numbers (statfs f_type) of the kernel's virtual file systems, by name. */
const VIRTUAL_FILE_SYSTEMS = new Map<number, string>([
  [0x9fa0, 'proc'],
  [0x62656572, 'sysfs'],
  [0x27e0eb, 'cgroup'],
  [0x63677270, 'cgroup2'],
  [0x64626720, 'debugfs'],
  [0x74726163, 'tracefs'],
  [0x73636673, 'securityfs'],
  [0x1cd1, 'devpts'],
  [0x62656570, 'configfs'],
  [0xcafe4a11, 'bpf'],
  [0x6165676c, 'pstore'],
  [0xde5e81e4, 'efivarfs'],
]);

/** The name of the kernel's virtual file system that `at` is on ("sysfs"), or undefined: a real one, or unknown. */
function virtualFileSystem(at: string): string | undefined {
  try {
    return VIRTUAL_FILE_SYSTEMS.get(Number(statfsSync(at).type));
  } catch {
    return undefined;
  }
}

/** Where the symbolic link `at` points, when it is one and that does not exist; else undefined. */
function danglingLinkTarget(at: string): string | undefined {
  try {
    return lstatSync(at).isSymbolicLink() ? path.resolve(path.dirname(at), readlinkSync(at)) : undefined;
  } catch {
    return undefined;
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
