import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createLogger } from '../observability/logger.ts';
import { createMetrics } from '../observability/metrics.ts';
import { DatabaseUnavailableError } from '../storage/database.ts';
import { buildServer } from './server.ts';

/** A server whose routes fail as asked, logging JSON lines into `lines` through the production logger. */
async function failingServer(now: () => number) {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger('info', {
    write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>),
  });
  const server = buildServer({
    log,
    metrics: createMetrics(),
    verifyToken: () => Promise.reject(new Error('no tokens here')),
    errors: { unavailableLogIntervalMs: 10_000, now },
  });
  server.get('/down', async () => {
    throw new DatabaseUnavailableError('the database did not answer within 5000 ms');
  });
  server.get('/bug', async () => {
    throw new TypeError('undefined is not a function');
  });
  await server.ready();
  return { server, lines };
}

describe('error logging', () => {
  it('logs refusals for unavailability at warn, without a stack, at most once per interval with a count; 500s each at error with the stack', async () => {
    let clock = 0;
    const { server, lines } = await failingServer(() => clock);

    for (let i = 0; i < 50; i++) assert.equal((await server.inject({ method: 'GET', url: '/down' })).statusCode, 503);
    assert.equal(lines.length, 1, 'an outage of 50 refusals is one line');
    const [first] = lines;
    assert.equal(first!.level, 40, 'warn');
    assert.equal(first!.msg, 'requests refused: unavailable (503)');
    assert.deepEqual(first!.cause, {
      type: 'DatabaseUnavailableError',
      message: 'the database did not answer within 5000 ms',
    });
    assert.equal(first!.refused, 1);
    assert.ok(!JSON.stringify(first).includes('"stack"'), 'no stack: the cause is known');

    clock += 9_999;
    await server.inject({ method: 'GET', url: '/down' });
    assert.equal(lines.length, 1, 'still inside the interval');
    clock += 1;
    await server.inject({ method: 'GET', url: '/down' });
    assert.equal(lines.length, 2, 'the next line once the interval has passed');
    assert.equal(lines[1]!.refused, 51, 'it counts the refusals since the previous line, itself included');

    for (let i = 0; i < 3; i++) assert.equal((await server.inject({ method: 'GET', url: '/bug' })).statusCode, 500);
    const bugs = lines.slice(2);
    assert.equal(bugs.length, 3, 'every unexpected error is logged');
    for (const line of bugs) {
      assert.equal(line.level, 50, 'error');
      assert.equal(line.msg, 'request failed: internal');
      assert.match(String((line.err as { stack?: string }).stack), /TypeError: undefined is not a function\n\s+at /);
    }
    await server.close();
  });
});
