// Every dependency may vanish at any moment. In each mode with a server, real
// `serve` processes in the combined shape (ROLE=all, WEB_CONCURRENCY=2) take
// a few hundred orders a second from 200 clients while each dependency in
// turn is stopped, killed or cut off, and started again: PostgreSQL (fast
// and immediate shutdown, the second again while Orderflow reconnects, and
// every connection dropped), the broker (SIGKILL), Redis (SIGKILL) and the
// HTTP payment gateway (cut with requests in flight). Each step asserts that
// no serving process exited, that every request got an answer in bounded
// time (503 problem+json with Retry-After when it needed the missing
// dependency, served as usual when it did not), that /healthz and /metrics
// kept answering, and that the same processes caught up once it was back.
// At the end every promise of the contract is checked, with money counted at
// the gateway's ledger. The servers are the test's own (test/support/private-postgres.ts, servers.ts).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { privateServersUnavailable, type PrivateServerKind } from './support/servers.ts';
import { OutageRig, outageSteps, stepName, type Answer, type OutageMode, type StepReport } from './support/outages.ts';

const MODES: { mode: OutageMode; servers: PrivateServerKind[] }[] = [
  { mode: 'postgres', servers: ['postgresql', 'redis'] },
  { mode: 'nats', servers: ['postgresql', 'redis', 'nats'] },
  { mode: 'rabbitmq', servers: ['postgresql', 'redis', 'rabbitmq'] },
];
/** DATABASE_TIMEOUT_MS's default, and a margin: no request may wait longer. */
const ANSWER_BOUND_MS = 12_000;

function assertAnswered(answers: readonly Answer[], what: string): void {
  const unanswered = answers.filter((a) => a.status === 0);
  assert.equal(
    unanswered.length,
    0,
    `${what}: ${unanswered.length} requests got no answer (connection refused or cut)`,
  );
  const unexpected = answers.filter((a) => ![200, 202, 503].includes(a.status));
  assert.deepEqual(
    unexpected.map((a) => a.status),
    [],
    `${what}: only 2xx and 503 answers`,
  );
  for (const refused of answers.filter((a) => a.status === 503)) {
    assert.ok(refused.problemJson, `${what}: a 503 is problem+json`);
    assert.ok(Number(refused.retryAfter) > 0, `${what}: a 503 carries Retry-After`);
  }
  const slowest = Math.max(0, ...answers.map((a) => a.ms));
  assert.ok(slowest < ANSWER_BOUND_MS, `${what}: the slowest answer took ${Math.round(slowest)} ms`);
}

function assertStep(report: StepReport): void {
  const { step, during, probes } = report;
  assert.equal(report.pidsBefore.length, 2, 'two serving copies');
  assert.deepEqual(report.pidsAfter, report.pidsBefore, 'no serving process exited or was replaced');
  assert.ok(during.length > 0, 'orders were placed while the dependency was away');
  assertAnswered(during, 'while away');
  const statuses = (route: string) => probes.filter((p) => p.route === route).map((p) => p.status);
  assert.deepEqual([...new Set(statuses('/healthz'))], [200], '/healthz stays up');
  for (const metrics of probes.filter((p) => p.route === '/metrics')) {
    assert.equal(metrics.status, 200, '/metrics answers');
    // Not a stopwatch (the machine's load decides milliseconds): a copy whose
    // scrape-time reads waited on the missing dependency would miss the
    // supervisor's collect timeout and be left out of the sum, so "every copy
    // answered" is what proves the reads are bounded.
    const copies = /^orderflow_cluster_copies (\d+)$/m.exec(metrics.body)?.[1];
    assert.equal(copies, String(report.pidsBefore.length), '/metrics counts the serving copies');
    assert.equal(
      /^orderflow_cluster_copies_scraped (\d+)$/m.exec(metrics.body)?.[1],
      copies,
      `/metrics adds up every serving copy (${copies}): none waited on the missing dependency`,
    );
    assert.ok(metrics.ms < ANSWER_BOUND_MS, `/metrics answered in ${Math.round(metrics.ms)} ms`);
  }
  const refused = during.filter((a) => a.status === 503).length;
  const metricsBodies = probes.filter((p) => p.route === '/metrics').map((p) => p.body);
  switch (step.dependency) {
    case 'postgresql':
      if (step.how === 'drop') break;
      assert.ok(refused > 0, 'orders are refused with 503 while PostgreSQL is down');
      assert.deepEqual([...new Set(statuses('/readyz'))], [503], '/readyz says not ready');
      break;
    case 'nats':
    case 'rabbitmq':
      assert.equal(refused, 0, 'orders are accepted while the broker is down');
      assert.deepEqual([...new Set(statuses('/readyz'))], [200], '/readyz stays ready');
      assert.ok(
        metricsBodies.some(
          (body) =>
            body.includes('orderflow_backlog_up{source="broker"} 0') &&
            /^orderflow_outbox_backlog\{queue="payments\.charge"\} [1-9]/m.test(body),
        ),
        '/metrics shows the outbox growing, and the broker figures as unavailable',
      );
      break;
    case 'redis':
      assert.equal(refused, 0, 'orders are accepted while Redis is down');
      assert.deepEqual([...new Set(statuses('/readyz'))], [200], '/readyz stays ready');
      assert.ok(
        metricsBodies.some((body) => /^orderflow_redis_up 0$/m.test(body)),
        '/metrics says Redis is down',
      );
      break;
    case 'gateway':
      assert.equal(refused, 0, 'orders are accepted while the payment gateway is down');
      assert.deepEqual([...new Set(statuses('/readyz'))], [200], '/readyz stays ready');
      break;
  }
}

for (const { mode, servers } of MODES) {
  const missing = privateServersUnavailable(...servers);
  if (missing && process.env.REQUIRE_SERVICES === '1')
    throw new Error(`the outage tests (${mode}) need private servers (REQUIRE_SERVICES=1): ${missing}`);

  describe(`dependency outages under load (${mode}, ROLE=all WEB_CONCURRENCY=2)`, { skip: missing }, () => {
    let rig: OutageRig;
    const logTail: string[] = [];
    const withLogs = async (fn: () => Promise<void>) => {
      try {
        await fn();
      } catch (error) {
        process.stderr.write(`serving processes' output (last lines):\n${logTail.join('\n')}\n`);
        throw error;
      }
    };

    before(async () => {
      rig = await OutageRig.start(mode, {
        onOutput: (name, line) => {
          logTail.push(`[${name}] ${line}`);
          if (logTail.length > 100) logTail.shift();
        },
      });
    });
    after(() => rig?.stop());

    for (const step of outageSteps(mode)) {
      it(
        `${stepName(step)}: no process exits, every request is answered, the same processes catch up`,
        { timeout: 180_000 },
        () =>
          withLogs(async () => {
            const report = await rig.run(step);
            assertStep(report);
            assert.equal((await rig.probe('/readyz')).status, 200, 'ready again');
          }),
      );
    }

    it(
      'every promise holds afterwards: every order terminal, no oversell, one net charge per confirmed order',
      { timeout: 180_000 },
      () =>
        withLogs(async () => {
          const checks = await rig.finish();
          for (const check of checks) assert.ok(check.ok, `${check.name}: ${check.detail}`);
          assertAnswered(rig.load.answers, 'over the whole run');
          assert.equal((await rig.servingPids()).length, 2);
        }),
    );
  });
}
