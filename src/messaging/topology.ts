// Removes everything a deployment created on its broker under its prefix:
// the NATS stream (with its consumers), or RabbitMQ's exchange and the
// queues of the names given (the caller knows which queues it used, e.g.
// payments' PAYMENT_QUEUES).
// For short-lived deployments on a shared broker (tests, benchmarks); a
// production deployment keeps its topology.
import { pino } from 'pino';
import { NatsBroker } from './nats-broker.ts';
import { RabbitMqBroker } from './rabbitmq-broker.ts';

export async function deleteBrokerTopology(
  brokerUrl: string,
  prefix: string,
  queues: readonly string[],
): Promise<void> {
  const log = pino({ level: 'silent' });
  const broker =
    new URL(brokerUrl).protocol === 'nats:'
      ? new NatsBroker(brokerUrl, log, { prefix })
      : new RabbitMqBroker(brokerUrl, log, { prefix });
  try {
    await broker.deleteTopology(queues);
  } finally {
    await broker.close();
  }
}
