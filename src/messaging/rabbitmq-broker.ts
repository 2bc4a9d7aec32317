// The broker port on RabbitMQ (AMQP 0-9-1). Per prefix, one durable direct
// exchange; per queue, a durable queue bound by the queue's name, a ladder of
// retry queues and a dead-letter queue:
//   <prefix>.<queue>              the work, consumed with manual acks and prefetch = concurrency
//   <prefix>.<queue>.retry.<ms>   a failed message waits here for its delay (per-message
//                                 expiration), then dead-letters back to the work queue
//   <prefix>.<queue>.dead         given up after the last attempt, kept for an operator
// The retry queues come in steps of four (10 ms, 40 ms, ... ~11 min) because
// RabbitMQ expires messages only at the head of a queue: in one shared retry
// queue a long delay would hold up every short one behind it; within a step a
// message waits at most four times its own delay.
// Every publish goes through a confirm channel and is awaited, so the relay
// deletes an outbox row, and a consumer acks a failed message, only after the
// broker has taken the message (or its retry) over.
import { connect, type ChannelModel, type ConfirmChannel, type ConsumeMessage, type Options } from 'amqplib';
import type { Logger } from 'pino';
import { BROKER, JOBS } from '../tunables.ts';
import { consumeLoop, type ConsumeAttempt, type ConsumeSession } from './consume-loop.ts';
import { createHash } from 'node:crypto';
import type { GetMessage } from 'amqplib';
import {
  invalidDeadLetterCursor,
  type BrokerDeadLetters,
  type DeadLetter,
  type DeadLetterPage,
} from './dead-letters.ts';
import {
  attemptCount,
  DEFAULT_BROKER_PREFIX,
  traceHeaders,
  withTimeout,
  type Broker,
  type BrokerOptions,
  type Delivery,
  type DeliveryHandler,
  type OutgoingMessage,
  type Subscription,
} from './broker.ts';

export type RabbitMqBrokerOptions = BrokerOptions;

const ATTEMPT_HEADER = 'x-orderflow-attempt';
const MAX_ATTEMPTS_HEADER = 'x-orderflow-max-attempts';
const DEAD_REASON_HEADER = 'x-orderflow-dead-reason';
/** When a message was dead-lettered, in ms since the epoch. */
const DEAD_AT_HEADER = 'x-orderflow-dead-at';
/** The most dead letters one listing or settling reads from a dead queue (each is taken and handed back). */
const DEAD_SCAN_LIMIT = 10_000;
const RETRY_STEPS_MS = [10, 40, 160, 640, 2_560, 10_240, 40_960, 163_840, 655_360] as const;

function retryStep(delayMs: number): number {
  return RETRY_STEPS_MS.find((step) => step >= delayMs) ?? RETRY_STEPS_MS.at(-1)!;
}

function publishConfirmed(
  channel: ConfirmChannel,
  exchange: string,
  routingKey: string,
  content: Buffer,
  options: Options.Publish,
): Promise<void> {
  return new Promise((resolve, reject) => {
    try {
      // A nack arrives as an error without detail.
      channel.publish(exchange, routingKey, content, options, (error: unknown) =>
        error ? reject(error instanceof Error ? error : new Error('the broker refused the message')) : resolve(),
      );
    } catch (error) {
      reject(error instanceof Error ? error : new Error(String(error)));
    }
  });
}

export class RabbitMqBroker implements Broker, BrokerDeadLetters {
  readonly kind = 'rabbitmq';
  readonly #url: string;
  readonly #log: Logger;
  readonly #prefix: string;
  readonly #publishTimeoutMs: number;
  readonly #defaultMaxAttempts: number;
  #connection: Promise<ChannelModel> | undefined;
  #publisher: Promise<ConfirmChannel> | undefined;
  /** Queues whose topology this connection has declared. */
  readonly #declared = new Map<string, Promise<void>>();
  readonly #subscriptions = new Set<Subscription>();
  #closed = false;

  constructor(url: string, log: Logger, options: RabbitMqBrokerOptions = {}) {
    this.#url = url;
    this.#log = log;
    this.#prefix = options.prefix ?? DEFAULT_BROKER_PREFIX;
    this.#publishTimeoutMs = options.publishTimeoutMs ?? BROKER.publishTimeoutMs;
    this.#defaultMaxAttempts = options.defaultMaxAttempts ?? JOBS.maxAttempts;
  }

  get exchange(): string {
    return this.#prefix;
  }

  queueName(queue: string): string {
    return `${this.#prefix}.${queue}`;
  }

  retryQueueName(queue: string, stepMs: number): string {
    return `${this.#prefix}.${queue}.retry.${stepMs}`;
  }

  deadQueueName(queue: string): string {
    return `${this.#prefix}.${queue}.dead`;
  }

  // Connected lazily and again after a loss: a process starts while the
  // broker is down and picks it up when it returns.
  #connect(): Promise<ChannelModel> {
    if (this.#closed) return Promise.reject(new Error('the RabbitMQ broker adapter is closed'));
    if (this.#connection) return this.#connection;
    const attempt = withTimeout(
      'RabbitMQ connect',
      this.#publishTimeoutMs,
      connect(this.#url, { timeout: BROKER.connectTimeoutMs }),
    ).then((model) => {
      const forget = () => {
        if (this.#connection === attempt) {
          this.#connection = undefined;
          this.#publisher = undefined;
          this.#declared.clear();
        }
      };
      model.on('error', (error: Error) => this.#log.warn({ err: error }, 'RabbitMQ connection error'));
      model.on('close', forget);
      return model;
    });
    this.#connection = attempt;
    attempt.catch(() => {
      if (this.#connection === attempt) this.#connection = undefined;
    });
    return attempt;
  }

  async #channel(): Promise<ConfirmChannel> {
    const model = await this.#connect();
    const channel = await model.createConfirmChannel();
    // An unhandled 'error' event would end the process; a closed channel is
    // noticed by its users through 'close' and failed calls.
    channel.on('error', (error: Error) => this.#log.warn({ err: error }, 'RabbitMQ channel error'));
    return channel;
  }

  #publisherChannel(): Promise<ConfirmChannel> {
    if (this.#publisher) return this.#publisher;
    const attempt = this.#channel().then((channel) => {
      channel.on('close', () => {
        if (this.#publisher === attempt) this.#publisher = undefined;
      });
      return channel;
    });
    this.#publisher = attempt;
    attempt.catch(() => {
      if (this.#publisher === attempt) this.#publisher = undefined;
    });
    return attempt;
  }

  /** Declares the exchange and the queue's work, retry and dead queues (idempotent; once per connection). */
  #declare(channel: ConfirmChannel, queue: string): Promise<void> {
    let declared = this.#declared.get(queue);
    if (!declared) {
      declared = (async () => {
        await channel.assertExchange(this.exchange, 'direct', { durable: true });
        await channel.assertQueue(this.queueName(queue), { durable: true });
        await channel.bindQueue(this.queueName(queue), this.exchange, queue);
        for (const step of RETRY_STEPS_MS) {
          await channel.assertQueue(this.retryQueueName(queue, step), {
            durable: true,
            messageTtl: step,
            deadLetterExchange: this.exchange,
            deadLetterRoutingKey: queue,
          });
        }
        await channel.assertQueue(this.deadQueueName(queue), { durable: true });
      })();
      this.#declared.set(queue, declared);
      declared.catch(() => this.#declared.delete(queue));
    }
    return declared;
  }

  async publish(messages: readonly OutgoingMessage[]): Promise<void> {
    if (messages.length === 0) return;
    await withTimeout(
      'RabbitMQ publish',
      this.#publishTimeoutMs,
      (async () => {
        const channel = await this.#publisherChannel();
        // The work queue must exist before a message is routed to it, or the
        // exchange would drop it with nobody consuming yet.
        for (const queue of new Set(messages.map((m) => m.queue))) await this.#declare(channel, queue);
        await Promise.all(
          messages.map((message) =>
            publishConfirmed(channel, this.exchange, message.queue, Buffer.from(JSON.stringify(message.payload)), {
              persistent: true,
              contentType: 'application/json',
              messageId: message.id,
              headers: {
                [ATTEMPT_HEADER]: 1,
                [MAX_ATTEMPTS_HEADER]: message.maxAttempts,
                ...traceHeaders(message.trace),
              },
            }),
          ),
        );
      })(),
    );
  }

  consume(queue: string, handler: DeliveryHandler, options: { concurrency: number }): Subscription {
    const concurrency = Math.max(1, options.concurrency);
    return consumeLoop(
      { name: 'RabbitMQ', log: this.#log, live: this.#subscriptions },
      queue,
      handler,
      options,
      (session) => this.#subscribeOnce(queue, concurrency, session),
    );
  }

  /** A channel of its own with prefetch = concurrency; the subscription lives as long as the channel. */
  async #subscribeOnce(queue: string, concurrency: number, session: ConsumeSession): Promise<ConsumeAttempt> {
    const channel = await this.#channel();
    let lost = () => {};
    const closed = new Promise<void>((resolve) => {
      lost = resolve;
      channel.on('close', () => resolve());
    });
    let consumerTag: string;
    try {
      await this.#declare(channel, queue);
      await channel.prefetch(concurrency);
      const reply = await channel.consume(
        this.queueName(queue),
        (msg) => {
          // null: the broker cancelled the consumer (queue deleted); resubscribe.
          if (msg === null) return lost();
          session.deliver(this.#delivery(channel, queue, msg));
        },
        { noAck: false },
      );
      consumerTag = reply.consumerTag;
    } catch (error) {
      await channel.close().catch(() => undefined);
      throw error;
    }
    const done = closed.then(async () => {
      if (session.stopping()) return;
      await channel.close().catch(() => undefined);
      throw new Error('RabbitMQ channel closed');
    });
    return {
      done,
      stop: async () => {
        // No new deliveries; the ones in flight finish and ack on this channel,
        // which is closed only then (anything unacked goes back to the queue).
        await channel.cancel(consumerTag).catch(() => undefined);
        await session.settled();
        await channel.close().catch(() => undefined);
        lost();
      },
    };
  }

  #delivery(channel: ConfirmChannel, queue: string, msg: ConsumeMessage): Delivery {
    const headers = msg.properties.headers ?? {};
    const attempt = attemptCount(headers[ATTEMPT_HEADER], 1);
    const maxAttempts = attemptCount(headers[MAX_ATTEMPTS_HEADER], this.#defaultMaxAttempts);
    const republish = async (target: string, extra: Record<string, unknown>, expiration?: number) => {
      await withTimeout(
        'RabbitMQ publish',
        this.#publishTimeoutMs,
        publishConfirmed(channel, '', target, msg.content, {
          persistent: true,
          contentType: 'application/json',
          messageId: msg.properties.messageId as string,
          headers: { ...headers, ...extra },
          ...(expiration !== undefined ? { expiration: String(expiration) } : {}),
        }),
      );
      // Taken over by the broker before this copy is forgotten: a crash in
      // between delivers the message twice, never loses it.
      channel.ack(msg);
    };
    return {
      id: typeof msg.properties.messageId === 'string' ? msg.properties.messageId : `amqp-${msg.fields.deliveryTag}`,
      queue,
      body: msg.content.toString('utf8'),
      attempt,
      maxAttempts,
      // A retry is republished with the same headers: it continues the same trace.
      trace: { traceparent: headers.traceparent, tracestate: headers.tracestate },
      ack: async () => channel.ack(msg),
      retry: async (delayMs) => {
        const delay = Math.max(1, Math.round(delayMs));
        await republish(this.retryQueueName(queue, retryStep(delay)), { [ATTEMPT_HEADER]: attempt + 1 }, delay);
      },
      deadLetter: async (reason) =>
        republish(this.deadQueueName(queue), {
          [DEAD_REASON_HEADER]: reason.slice(0, 1_000),
          [DEAD_AT_HEADER]: Date.now(),
        }),
    };
  }

  async #count(names: string[]): Promise<number> {
    const channel = await this.#publisherChannel();
    let total = 0;
    for (const name of names)
      total += (await withTimeout('RabbitMQ checkQueue', this.#publishTimeoutMs, channel.checkQueue(name)))
        .messageCount;
    return total;
  }

  async pending(queue: string): Promise<number> {
    // Ready messages, waiting retries; unacknowledged deliveries are not
    // counted by AMQP (the consumer side adds its own in-flight count).
    await this.#declare(await this.#publisherChannel(), queue);
    return this.#count([this.queueName(queue), ...RETRY_STEPS_MS.map((step) => this.retryQueueName(queue, step))]);
  }

  async deadLettered(queue: string): Promise<number> {
    await this.#declare(await this.#publisherChannel(), queue);
    return this.#count([this.deadQueueName(queue)]);
  }

  /**
   * AMQP cannot read a queue without taking its messages, so a listing takes
   * the dead letters unacknowledged, up to the end of the page, and hands
   * them all back by closing its channel (RabbitMQ requeues them in place).
   * The cursor is the number of letters before the page. While one listing
   * or settling holds them, another sees fewer.
   */
  async listDead(queues: readonly string[], options: { limit: number; after?: string }): Promise<DeadLetterPage> {
    if (options.after !== undefined && !/^\d{1,9}$/.test(options.after)) throw invalidDeadLetterCursor();
    const skip = Number(options.after ?? 0);
    const wanted = Math.min(skip + options.limit + 1, DEAD_SCAN_LIMIT);
    const letters: DeadLetter[] = [];
    await this.#withDeadQueues(queues, async (channel, queue) => {
      while (letters.length < wanted) {
        const msg = await channel.get(this.deadQueueName(queue), { noAck: false });
        if (msg === false) break;
        letters.push(this.#deadLetter(queue, msg));
      }
    });
    const items = letters.slice(skip, skip + options.limit);
    return { items, next: letters.length > skip + options.limit ? String(skip + options.limit) : undefined };
  }

  async settleDead(
    queues: readonly string[],
    ids: readonly string[],
    settle: (letter: DeadLetter) => Promise<void>,
  ): Promise<void> {
    const wanted = new Set(ids);
    const settled = new Set<string>();
    await this.#withDeadQueues(queues, async (channel, queue) => {
      for (let scanned = 0; scanned < DEAD_SCAN_LIMIT && settled.size < wanted.size; scanned++) {
        const msg = await channel.get(this.deadQueueName(queue), { noAck: false });
        if (msg === false) break;
        const letter = this.#deadLetter(queue, msg);
        if (!wanted.has(letter.id)) continue;
        // A second copy (parked twice by a crash between park and ack) goes with the first.
        if (settled.has(letter.id)) {
          channel.ack(msg);
          continue;
        }
        try {
          await settle(letter);
        } catch {
          continue; // handed back with the others; the caller has the error
        }
        channel.ack(msg);
        settled.add(letter.id);
      }
    });
  }

  /** Runs fn per queue on one channel of its own; closing it hands back every message taken and not acknowledged. */
  async #withDeadQueues(
    queues: readonly string[],
    fn: (channel: ConfirmChannel, queue: string) => Promise<void>,
  ): Promise<void> {
    const publisher = await this.#publisherChannel();
    for (const queue of queues) await this.#declare(publisher, queue);
    const channel = await this.#channel();
    try {
      for (const queue of queues) await fn(channel, queue);
    } finally {
      await channel
        .close()
        .catch((error: unknown) =>
          this.#log.warn(
            { err: error },
            'RabbitMQ: closing the dead-letter channel failed; its messages return when the connection closes',
          ),
        );
    }
  }

  #deadLetter(queue: string, msg: GetMessage): DeadLetter {
    const headers = msg.properties.headers ?? {};
    const messageId =
      typeof msg.properties.messageId === 'string' && msg.properties.messageId !== ''
        ? msg.properties.messageId
        : `sha256-${createHash('sha256').update(msg.content).digest('hex').slice(0, 32)}`;
    const diedAt = Number(headers[DEAD_AT_HEADER]);
    return {
      id: `${queue}:${messageId}`,
      queue,
      body: msg.content.toString('utf8'),
      reason: String(headers[DEAD_REASON_HEADER] ?? ''),
      attempts: attemptCount(headers[ATTEMPT_HEADER], 1),
      diedAt: Number.isSafeInteger(diedAt) && diedAt > 0 ? new Date(diedAt).toISOString() : null,
      key: null,
    };
  }

  /** Deletes the exchange and the queues of these queue names (tests and teardown). */
  async deleteTopology(queues: readonly string[]): Promise<void> {
    const channel = await this.#channel();
    try {
      for (const queue of queues) {
        for (const name of [
          this.queueName(queue),
          this.deadQueueName(queue),
          ...RETRY_STEPS_MS.map((step) => this.retryQueueName(queue, step)),
        ]) {
          await channel.deleteQueue(name);
        }
      }
      await channel.deleteExchange(this.exchange);
    } finally {
      await channel.close().catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await Promise.allSettled([...this.#subscriptions].map((s) => s.stop()));
    this.#closed = true;
    const connection = this.#connection;
    this.#connection = undefined;
    this.#publisher = undefined;
    const model = await connection?.catch(() => undefined);
    await model?.close().catch(() => undefined);
  }
}
