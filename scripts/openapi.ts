// Writes the OpenAPI document of the API to docs/openapi.json, generated
// from the routes of a real, in-process Orderflow (embedded database in
// memory, so it needs no server and touches no data). With --check it only
// compares, so the build fails when a route changed and the committed
// document did not.
//
//   node scripts/openapi.ts           regenerate docs/openapi.json
//   node scripts/openapi.ts --check   exit 1 when docs/openapi.json is stale
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { createApp } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import { renderOpenApi } from '../src/http/openapi.ts';

export const OPENAPI_FILE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'docs', 'openapi.json');
export const REGENERATE_COMMAND = 'node scripts/openapi.ts';

/** The document as the API serves it, from an app built with the defaults (not this shell's environment, so every machine writes the same file). */
export async function generateOpenApi(): Promise<string> {
  const config = loadConfig({ LOG_LEVEL: 'silent', PORT: '0' });
  const app = await createApp({ config, log: pino({ level: 'silent' }), inMemory: true });
  try {
    await app.server.ready();
    return renderOpenApi(app.server.swagger());
  } finally {
    await app.close();
  }
}

/** Undefined when docs/openapi.json is up to date, else why it is not. */
export async function checkOpenApi(generated: string): Promise<string | undefined> {
  let committed: string;
  try {
    committed = await readFile(OPENAPI_FILE, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    return `${path.relative(process.cwd(), OPENAPI_FILE)} does not exist; run \`${REGENERATE_COMMAND}\` and commit it`;
  }
  if (committed === generated) return undefined;
  return `${path.relative(process.cwd(), OPENAPI_FILE)} is out of date with the routes; run \`${REGENERATE_COMMAND}\` and commit it`;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { check: { type: 'boolean', default: false } } });
  const generated = await generateOpenApi();
  if (values.check) {
    const problem = await checkOpenApi(generated);
    if (problem !== undefined) {
      console.error(`openapi: ${problem}`);
      process.exitCode = 1;
      return;
    }
    console.log(`openapi: ${path.relative(process.cwd(), OPENAPI_FILE)} is up to date`);
    return;
  }
  await writeFile(OPENAPI_FILE, generated);
  console.log(`openapi: wrote ${path.relative(process.cwd(), OPENAPI_FILE)}`);
}

if (import.meta.main) await main();
