// What publishing the outbox to NATS JetStream costs the relay's process,
// per message: the broker adapter's publish (NatsBroker.publish, one
// acknowledgement inbox for the connection) against one JetStream request per
// message (`js.publish`, what the adapter did before), in one run. Rounds
// alternate between the two so that the machine's drift touches both alike;
// the figure is this process's CPU time (process.cpuUsage), which a busy
// machine disturbs far less than a rate.
import { randomBytes } from 'node:crypto';
import { headers } from '@nats-io/nats-core';
import { jetstream } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { pino } from 'pino';
import { NatsBroker } from '../src/messaging/nats-broker.ts';
import { round } from './stats.ts';

export interface PublishMeasurement {
  label: string;
  messages: number;
  cpuUsPerMessage: number;
  perSecond: number;
}

const QUEUE = 'payments.charge';

/**
 * `rounds` rounds of each way, each publishing `perRound` messages in
 * batches of `batch` (the relay's batch is up to 500, each awaited before the
 * next, as the relay does).
 */
export async function measurePublish(
  url: string,
  options: { rounds: number; perRound: number; batch: number },
): Promise<PublishMeasurement[]> {
  const prefix = `pubbench${randomBytes(4).toString('hex')}`;
  const broker = new NatsBroker(url, pino({ level: 'silent' }), { prefix });
  const parsed = new URL(url);
  const nc = await connect({ servers: `${parsed.hostname}:${parsed.port || '4222'}` });
  const js = jetstream(nc);
  let seq = 0;
  const batchOf = () =>
    Array.from({ length: options.batch }, () => ({
      id: `m${seq++}`,
      queue: QUEUE,
      payload: { orderId: `ord_${String(seq).padStart(26, '0')}` },
      maxAttempts: 10,
    }));
  const ways = {
    'adapter: one acknowledgement inbox, one deadline per batch': (messages: ReturnType<typeof batchOf>) =>
      broker.publish(messages),
    'before: one JetStream request per message (js.publish)': async (messages: ReturnType<typeof batchOf>) => {
      await Promise.all(
        messages.map((message) => {
          const h = headers();
          h.set('Orderflow-Max-Attempts', String(message.maxAttempts));
          return js.publish(broker.subject(message.queue), JSON.stringify(message.payload), {
            msgID: message.id,
            headers: h,
            timeout: 5_000,
          });
        }),
      );
    },
  };
  const totals = new Map<string, { cpuUs: number; ms: number; messages: number }>();
  try {
    await broker.publish(batchOf()); // creates the stream; warms both paths' code
    await ways['before: one JetStream request per message (js.publish)'](batchOf());
    for (let round = 0; round < options.rounds; round++) {
      for (const [label, publish] of Object.entries(ways)) {
        const cpu = process.cpuUsage();
        const started = performance.now();
        for (let sent = 0; sent < options.perRound; sent += options.batch) await publish(batchOf());
        const used = process.cpuUsage(cpu);
        const total = totals.get(label) ?? { cpuUs: 0, ms: 0, messages: 0 };
        total.cpuUs += used.user + used.system;
        total.ms += performance.now() - started;
        total.messages += options.perRound;
        totals.set(label, total);
      }
    }
  } finally {
    await broker.deleteTopology().catch(() => undefined);
    await broker.close();
    await nc.close();
  }
  return [...totals].map(([label, t]) => ({
    label,
    messages: t.messages,
    cpuUsPerMessage: round(t.cpuUs / t.messages, 2),
    perSecond: round(t.messages / (t.ms / 1000), 1),
  }));
}
