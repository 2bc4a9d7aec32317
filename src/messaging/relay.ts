// Where a message is published: the outbox relay. Each pass takes a batch of
// ready messaging.outbox rows in id order, publishes it, waits for the
// broker's confirmation of every message, then deletes the rows. On
// PostgreSQL the pass is one transaction holding a transaction-scoped
// advisory lock, so any number of relays may run and only one publishes at a
// time. A crash after the publish and before the commit leaves the rows in
// place and the next pass publishes them again: the broker's dedupe (NATS)
// and the consumers' inbox absorb the repeat. While the broker is down,
// passes fail and are retried with backoff; producers keep committing rows,
// and the backlog drains when the broker returns.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { backoffMs, type Backoff } from '../backoff.ts';
import { RELAY } from '../tunables.ts';
import type { Metrics } from '../observability/metrics.ts';
import { carrierOfSpan, contextOf, failSpan, SpanKind, startSpan } from '../observability/tracing.ts';
import type { Database } from '../storage/database.ts';
import type { Broker, OutgoingMessage } from './broker.ts';
import { deleteOutbox, lockedReadyOutbox, outboxHasReady, readyOutbox, type OutboxRow } from './store.ts';

export interface RelayOptions {
  batchSize?: number;
  /** Polling interval while the outbox is empty; a local enqueue wakes the relay sooner. */
  idlePollMs?: number;
  /** Backoff after a failed pass (see backoffMs): from retryBaseMs, doubling, up to retryMaxMs. */
  retryBaseMs?: number;
  retryMaxMs?: number;
}

export class Relay {
  readonly #db: Database;
  readonly #broker: Broker;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #batchSize: number;
  readonly #idlePollMs: number;
  readonly #retry: Backoff;
  #running = false;
  #loop: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  #wakeRequested = false;
  #lastPassPublished = 0;

  constructor(db: Database, broker: Broker, log: Logger, metrics: Metrics, options: RelayOptions = {}) {
    this.#db = db;
    this.#broker = broker;
    this.#log = log;
    this.#metrics = metrics;
    this.#batchSize = options.batchSize ?? RELAY.batchSize;
    this.#idlePollMs = options.idlePollMs ?? RELAY.idlePollMs;
    this.#retry = { baseMs: options.retryBaseMs ?? RELAY.retry.baseMs, maxMs: options.retryMaxMs ?? RELAY.retry.maxMs };
  }

  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#loop = this.#run();
  }

  /** Finishes the pass in progress (its rows are published and deleted, or left for the next relay) and stops. */
  async stop(): Promise<void> {
    this.#running = false;
    this.#wake?.();
    await this.#loop;
  }

  /** Ends the idle wait early: rows were probably just committed. */
  wake(): void {
    this.#wakeRequested = true;
    this.#wake?.();
  }

  /** One pass: publishes up to one batch; returns how many rows it published (0 when idle or another relay holds the lock). */
  async pass(): Promise<number> {
    this.#lastPassPublished = await this.#pass();
    return this.#lastPassPublished;
  }

  async #pass(): Promise<number> {
    // Checked outside any transaction, so an idle relay costs one cheap read
    // per poll; under load (the last pass published) more rows are likely,
    // and the check would only cost a round trip.
    if (this.#lastPassPublished === 0 && !(await outboxHasReady(this.#db))) return 0;
    if (!this.#db.concurrentTransactions) {
      // The embedded database belongs to this one process, and an open
      // transaction there would hold the whole database while the broker
      // answers: no lock, no transaction.
      const db = this.#db;
      return this.#publishBatch(await readyOutbox(db, this.#batchSize), (ids) => deleteOutbox(db, ids));
    }
    // Two round trips: the lock and the read (with BEGIN), then the delete
    // with the COMMIT (see Transaction.commit): a failed delete rolls the
    // pass back, and its rows are published again, as after a crash.
    return this.#db.transaction(async (tx) =>
      this.#publishBatch(await lockedReadyOutbox(tx, this.#batchSize), async (ids) => {
        await tx.commit([deleteOutbox(tx, ids)]);
      }),
    );
  }

  async #publishBatch(rows: readonly OutboxRow[], remove: (ids: string[]) => Promise<void>): Promise<number> {
    if (rows.length === 0) return 0;
    const messages: OutgoingMessage[] = rows.map((row) => ({
      id: row.message_id,
      queue: row.queue,
      payload: row.payload,
      maxAttempts: row.max_attempts,
    }));
    await this.#publish(messages, rows);
    await remove(rows.map((r) => r.id));
    for (const row of rows) this.#metrics.relayPublished.inc({ queue: row.queue });
    return rows.length;
  }

  /**
   * Publishes the batch; while tracing, each message in a producer span that
   * continues the trace its row carries, and whose context the message's
   * headers carry on to the consumer.
   */
  async #publish(messages: OutgoingMessage[], rows: readonly OutboxRow[]): Promise<void> {
    const spans = rows.map((row, i) =>
      startSpan(`publish ${row.queue}`, {
        kind: SpanKind.PRODUCER,
        parent: contextOf(row.trace_context),
        attributes: {
          'messaging.system': this.#broker.kind,
          'messaging.operation.type': 'send',
          'messaging.operation.name': 'publish',
          'messaging.destination.name': row.queue,
          'messaging.message.id': messages[i]!.id,
          'messaging.batch.message_count': rows.length,
        },
      }),
    );
    spans.forEach((span, i) => span && (messages[i]!.trace = carrierOfSpan(span)));
    try {
      await this.#broker.publish(messages);
    } catch (error) {
      for (const span of spans) if (span) failSpan(span, error);
      throw error;
    } finally {
      for (const span of spans) span?.end();
    }
  }

  async #run(): Promise<void> {
    let failures = 0;
    while (this.#running) {
      let published: number;
      try {
        published = await this.pass();
        if (failures > 0) this.#log.info({ failedPasses: failures }, 'relay: the broker takes messages again');
        failures = 0;
      } catch (error) {
        failures++;
        this.#metrics.relayFailures.inc();
        const retryInMs = Math.round(backoffMs(failures, this.#retry));
        this.#log.error(
          { err: error, failedPasses: failures, retryInMs },
          'relay pass failed; the outbox keeps the messages and the pass is retried',
        );
        await this.#idle(retryInMs, false);
        continue;
      }
      // A full batch means more is probably waiting: go again at once.
      if (published < this.#batchSize && this.#running) await this.#idle(this.#idlePollMs, true);
    }
  }

  async #idle(ms: number, wakeable: boolean): Promise<void> {
    if (wakeable && this.#wakeRequested) {
      this.#wakeRequested = false;
      return;
    }
    const controller = new AbortController();
    this.#wake = () => {
      if (wakeable || !this.#running) controller.abort();
    };
    await sleep(ms, undefined, { signal: controller.signal }).catch(() => undefined);
    this.#wake = undefined;
    this.#wakeRequested = false;
  }
}
