// Run by initEmbeddedDataDir (pglite.ts) as a child process: creates the
// embedded database's files in the creating directory it is given (inside
// DATA_DIR), then exits, so the memory initdb needed goes back to the
// operating system with the process. Its parent holds DATA_DIR's lock for it
// (taking it here would find it taken); run on its own, it takes the lock
// itself. Only its parent puts the database in place, once this exited 0.
import path from 'node:path';
import { CREATING_PREFIX, lockDataDir } from './data-dir-lock.ts';
import { createDatabaseFiles } from './pglite.ts';

const creating = process.argv[2];
if (!creating || !path.basename(creating).startsWith(CREATING_PREFIX)) {
  process.stderr.write(`usage: node src/storage/pglite-initdb.ts <DATA_DIR>/${CREATING_PREFIX}<suffix>\n`);
  process.exit(2);
}
const lock = lockDataDir(path.dirname(path.resolve(creating)), { allowHolder: process.ppid });
try {
  await createDatabaseFiles(creating);
} finally {
  lock.release();
}
