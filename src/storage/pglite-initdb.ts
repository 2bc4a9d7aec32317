// Run by initEmbeddedDataDir (pglite.ts) as a child process: creates the
// embedded database's files in the directory it is given, then exits, so the
// memory initdb needed goes back to the operating system with the process.
// Its parent holds the directory's lock for it (taking it here would find it
// taken); run on its own, it takes the lock itself.
import { openPGlite } from './pglite.ts';

const dataDir = process.argv[2];
if (!dataDir) {
  process.stderr.write('usage: node src/storage/pglite-initdb.ts <data directory>\n');
  process.exit(2);
}
await (await openPGlite(dataDir, { parentHoldsLock: true })).close();
