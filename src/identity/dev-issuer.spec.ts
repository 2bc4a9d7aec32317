import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { openDevIssuer } from './dev-issuer.ts';

/** Runs openDevIssuer(dataDir) in a new process; resolves with the key id it got. */
function kidFromAnotherProcess(dataDir: string): Promise<string> {
  const script = `const { openDevIssuer } = await import(${JSON.stringify(path.join(import.meta.dirname, 'dev-issuer.ts'))});
process.stdout.write(String((await openDevIssuer(process.argv[1])).publicJwk.kid));`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', script, dataDir], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
    child.on('exit', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`openDevIssuer failed in another process: ${err}`)),
    );
  });
}

describe('openDevIssuer', () => {
  it('processes starting at once on a fresh DATA_DIR all use one key, and none reads it half-written', async () => {
    for (let round = 0; round < 2; round++) {
      const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-issuer-'));
      try {
        const kids = await Promise.all([
          ...Array.from({ length: 4 }, () => kidFromAnotherProcess(dataDir)),
          ...Array.from({ length: 20 }, async () => (await openDevIssuer(dataDir)).publicJwk.kid),
        ]);
        assert.equal(new Set(kids).size, 1, `every opener got the same key: ${kids.join(', ')}`);
        assert.deepEqual(await readdir(dataDir), ['dev-issuer-key.json'], 'no temporary file is left behind');
      } finally {
        await rm(dataDir, { recursive: true, force: true });
      }
    }
  });
});
