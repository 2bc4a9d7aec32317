// The lock's look into /proc: a process with a file inside DATA_DIR open
// keeps the directory, whatever its lock and pid files say (both can be
// deleted and the lock file made again while it runs). Real processes, each
// holding a real open file; readiness is their word on stdout, not a delay.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, closeSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { DataDirInUseError, LOCK_FILE, LockFileMissingError, lockDataDir } from './data-dir-lock.ts';

const hasProc = existsSync('/proc/self/fd');

/**
 * Starts a process that opens `file` for writing (deleting it after, when
 * `deleteIt`), and resolves once it says it has it open; it keeps it open
 * until the test ends. `stdout`: a descriptor of this process to give it as
 * its standard output instead of a pipe (readiness then comes on stderr).
 */
async function holding(t: TestContext, file: string, deleteIt: boolean, stdout?: number): Promise<ChildProcess> {
  const script =
    "const fs = require('node:fs'); fs.openSync(process.argv[1], 'w');" +
    (deleteIt ? ' fs.unlinkSync(process.argv[1]);' : '') +
    " process.stderr.write('ready\\n'); process.stdin.resume();";
  const child = spawn(process.execPath, ['-e', script, file], { stdio: ['pipe', stdout ?? 'ignore', 'pipe'] });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  t.after(async () => {
    child.kill('SIGKILL');
    await exited;
  });
  let said = '';
  await new Promise<void>((resolve, reject) => {
    child.stderr!.on('data', (chunk: Buffer) => {
      said += chunk.toString();
      if (said.includes('ready')) resolve();
    });
    void exited.then(() => reject(new Error(`the holding process exited: ${said}`)));
  });
  return child;
}

describe('DATA_DIR lock: processes with files open in DATA_DIR', { skip: !hasProc && 'no /proc here' }, () => {
  it('a process with a (deleted) file inside DATA_DIR open keeps it: refused naming its pid, its command and the file; the lock is free once it ends', async (t) => {
    const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-scan-'));
    t.after(() => rm(dataDir, { recursive: true, force: true }));
    await mkdir(path.join(dataDir, 'base'));
    const file = path.join(dataDir, 'base', 'held');
    const holder = await holding(t, file, true);
    assert.throws(
      () => lockDataDir(dataDir),
      (error: Error) =>
        error instanceof DataDirInUseError &&
        error.holderPid === holder.pid &&
        error.message.includes(`(pid ${holder.pid}, `) &&
        error.message.includes(`which has ${file} open`),
    );
    holder.kill('SIGKILL');
    await new Promise((resolve) => holder.once('exit', resolve));
    lockDataDir(dataDir).release();
  });

  it('a process with files open beside DATA_DIR (a sibling whose name starts with it), or only with one this process has open too (a log it inherited), does not keep it', async (t) => {
    const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-scan-'));
    const beside = `${dataDir}-beside`;
    t.after(() => rm(beside, { force: true }));
    t.after(() => rm(dataDir, { recursive: true, force: true }));
    await holding(t, beside, false);
    const log = openSync(path.join(dataDir, 'server.log'), 'a');
    t.after(() => closeSync(log));
    await holding(t, beside, false, log);
    lockDataDir(dataDir).release();
  });

  it('with the lock file deleted and the database not shut down cleanly: refused naming a process that has it open; with none, refused saying so and to recreate the lock file, which is not made', async (t) => {
    const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-scan-'));
    t.after(() => rm(dataDir, { recursive: true, force: true }));
    // A database as PostgreSQL leaves it while open: its control file's state is not "shut down".
    await writeFile(path.join(dataDir, 'PG_VERSION'), '17\n');
    await mkdir(path.join(dataDir, 'global'));
    await writeFile(path.join(dataDir, 'global', 'pg_control'), Buffer.alloc(64));
    const lockFile = path.join(dataDir, LOCK_FILE);
    const holder = await holding(t, path.join(dataDir, 'global', 'held'), true);
    assert.throws(
      () => lockDataDir(dataDir),
      (error: Error) => error instanceof DataDirInUseError && error.holderPid === holder.pid,
    );
    holder.kill('SIGKILL');
    await new Promise((resolve) => holder.once('exit', resolve));
    assert.throws(
      () => lockDataDir(dataDir),
      (error: Error) =>
        error instanceof LockFileMissingError &&
        error.message.includes('has a file in it open (checked in /proc') &&
        error.message.includes(`touch ${lockFile}`),
    );
    assert.ok(!existsSync(lockFile), 'a refused lock made no lock file');
  });
});
