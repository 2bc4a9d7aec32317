// Reads an app's dead letters where an operator would: the messaging.dead_jobs
// table without a broker, the `<prefix>.dead.<queue>` subject on NATS, the
// `<prefix>.<queue>.dead` queue on RabbitMQ. The messages are left in place.
import { randomBytes } from 'node:crypto';
import { AckPolicy, DeliverPolicy, jetstreamManager, jetstream } from '@nats-io/jetstream';
import { connect as connectNats } from '@nats-io/transport-node';
import { connect as connectAmqp } from 'amqplib';
import type { App } from '../../src/app.ts';
import { NatsBroker } from '../../src/messaging/nats-broker.ts';
import { RabbitMqBroker } from '../../src/messaging/rabbitmq-broker.ts';

export interface DeadLetter {
  /** The message body or job payload, as text. */
  body: string;
  /** Why it was given up on. */
  reason: string;
}

export async function deadLetters(app: App, queue: string): Promise<DeadLetter[]> {
  const { broker } = app;
  if (!broker) {
    const rows = await app.db.query<{ body: string; reason: string }>(
      'SELECT payload::text AS body, last_error AS reason FROM messaging.dead_jobs WHERE queue = $1 ORDER BY id',
      [queue],
    );
    return rows.map((r) => ({ body: r.body, reason: r.reason }));
  }
  const url = new URL(app.config.brokerUrl!);
  if (broker instanceof NatsBroker) {
    const count = await broker.deadLettered(queue);
    if (count === 0) return [];
    const nc = await connectNats({ servers: `${url.hostname}:${url.port || '4222'}` });
    try {
      const jsm = await jetstreamManager(nc);
      // A consumer of its own on the dead subject; unacknowledged, the messages stay when it is deleted.
      const name = `inspect_${randomBytes(4).toString('hex')}`;
      await jsm.consumers.add(broker.stream, {
        durable_name: name,
        filter_subject: broker.deadSubject(queue),
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
      });
      try {
        const consumer = await jetstream(nc).consumers.get(broker.stream, name);
        const letters: DeadLetter[] = [];
        for await (const msg of await consumer.fetch({ max_messages: count, expires: 5_000 })) {
          letters.push({ body: msg.string(), reason: msg.headers?.get('Orderflow-Dead-Reason') ?? '' });
          if (letters.length === count) break;
        }
        return letters;
      } finally {
        await jsm.consumers.delete(broker.stream, name);
      }
    } finally {
      await nc.close();
    }
  }
  if (broker instanceof RabbitMqBroker) {
    const connection = await connectAmqp(url.toString());
    try {
      const channel = await connection.createChannel();
      const letters: DeadLetter[] = [];
      // Taken unacknowledged: closing the channel puts them back.
      for (
        let msg = await channel.get(broker.deadQueueName(queue));
        msg !== false;
        msg = await channel.get(broker.deadQueueName(queue))
      ) {
        letters.push({
          body: msg.content.toString('utf8'),
          reason: String(msg.properties.headers?.['x-orderflow-dead-reason'] ?? ''),
        });
      }
      await channel.close();
      return letters;
    } finally {
      await connection.close();
    }
  }
  throw new Error(`unknown broker ${broker.kind}`);
}
