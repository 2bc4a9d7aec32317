// The embedded database is sized for one process: a fresh data directory is
// created by a child process (its initdb memory goes back with it), and the
// database runs with the small memory settings, reopened as often as needed.
import assert from 'node:assert/strict';
import { access, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { DataDirInUseError, LOCK_FILE, LockFileMissingError, PID_FILE } from './data-dir-lock.ts';
import { EMBEDDED_SETTINGS, initEmbeddedDataDir, openPGlite } from './pglite.ts';

describe('embedded database sizing', () => {
  it('a fresh DATA_DIR is created outside this process, then opens with the embedded settings; a second init changes nothing', async () => {
    const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-pglite-'));
    try {
      await initEmbeddedDataDir(dataDir);
      await access(path.join(dataDir, 'PG_VERSION'));
      const db = await openPGlite(dataDir);
      try {
        // The directory is this open's until it closes, even within this process.
        const inUse = (error: Error) =>
          error instanceof DataDirInUseError &&
          error.message.includes(`${dataDir} is in use`) &&
          error.message.includes(`(pid ${process.pid})`);
        await assert.rejects(openPGlite(dataDir), inUse);
        await assert.rejects(initEmbeddedDataDir(dataDir), inUse);
        await db.query('CREATE TABLE kept (n int)');
        for (const [name, value] of Object.entries(EMBEDDED_SETTINGS)) {
          const [row] = await db.query<{ setting: string }>(`SELECT current_setting($1) AS setting`, [name]);
          assert.equal(row?.setting, value, name);
        }
      } finally {
        await db.close();
      }
      await initEmbeddedDataDir(dataDir);
      const reopened = await openPGlite(dataDir);
      try {
        assert.deepEqual(
          await reopened.query('SELECT count(*)::int AS n FROM kept'),
          [{ n: 0 }],
          'the existing database was kept',
        );
      } finally {
        await reopened.close();
      }
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it('with its lock and pid files deleted, an open database still keeps a second open out; closed cleanly, it is opened again without them', async () => {
    const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-pglite-'));
    const lockFile = path.join(dataDir, LOCK_FILE);
    try {
      const db = await openPGlite(dataDir);
      try {
        await rm(lockFile);
        await rm(path.join(dataDir, PID_FILE));
        await assert.rejects(
          openPGlite(dataDir),
          (error: Error) => error instanceof LockFileMissingError && error.message.includes(`touch ${lockFile}`),
        );
        assert.ok(!existsSync(lockFile), 'the refused open made no lock file of its own');
        await db.query('CREATE TABLE kept (n int)');
      } finally {
        await db.close();
      }
      // PostgreSQL recorded the close in its control file: no process can have it.
      const reopened = await openPGlite(dataDir);
      try {
        assert.ok(existsSync(lockFile));
        assert.deepEqual(await reopened.query('SELECT count(*)::int AS n FROM kept'), [{ n: 0 }]);
      } finally {
        await reopened.close();
      }
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it('a data directory that cannot be created is a clear error naming it', async () => {
    const parent = await mkdtemp(path.join(tmpdir(), 'orderflow-pglite-'));
    try {
      const file = path.join(parent, 'not-a-directory');
      await writeFile(file, 'x');
      await assert.rejects(initEmbeddedDataDir(path.join(file, 'data')), (error: Error) =>
        error.message.includes(file),
      );
    } finally {
      await rm(parent, { recursive: true, force: true });
    }
  });
});
