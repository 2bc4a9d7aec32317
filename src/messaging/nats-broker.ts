// The broker port on NATS JetStream. One stream (work-queue retention, so an
// acknowledged message is removed) captures `<prefix>.>`; each queue is the
// subject `<prefix>.q.<queue>` with one durable pull consumer, and its dead
// letters go to `<prefix>.dead.<queue>` in the same stream, kept until an
// operator reads them. The outbox id travels as Nats-Msg-Id, so a message the
// relay re-publishes inside the stream's duplicate window is stored once.
import {
  AckPolicy,
  DeliverPolicy,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type ConsumerMessages,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from '@nats-io/jetstream';
import { connect, createInbox, headers, nanos, type Msg, type NatsConnection } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import { BROKER, JOBS } from '../tunables.ts';
import { consumeLoop, type ConsumeAttempt, type ConsumeSession } from './consume-loop.ts';
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

export interface NatsBrokerOptions extends BrokerOptions {
  /** A delivery not acknowledged within this time is delivered again (a consumer that died mid-message). */
  ackWaitMs?: number;
  /** How long the stream remembers message ids to drop re-published duplicates. */
  duplicateWindowMs?: number;
  /**
   * Copies of the stream JetStream keeps on different servers of a NATS
   * cluster (num_replicas, 1–5; default 1, the only value one server takes).
   * Applied when this adapter creates the stream; an existing stream keeps
   * its own (an operator changes it with `nats stream edit --replicas`).
   */
  streamReplicas?: number;
}

const MAX_ATTEMPTS_HEADER = 'Orderflow-Max-Attempts';
const DEAD_REASON_HEADER = 'Orderflow-Dead-Reason';
const DEAD_ATTEMPTS_HEADER = 'Orderflow-Dead-Attempts';
const MSG_ID_HEADER = 'Nats-Msg-Id';

interface Connected {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  /** Where the stream's acknowledgements of this connection's publishes arrive. */
  acks: PublishAcks;
  /** False between a 'disconnect' and the next 'reconnect' of nc. */
  link: { up: boolean };
}

/** One batch of publishes waiting for JetStream's acknowledgements. */
interface PendingBatch {
  waiting: number;
  resolve: () => void;
  reject: (error: Error) => void;
}

/**
 * JetStream acknowledges a stored message by answering on the publish's
 * reply subject (a PubAck: `{"stream": …, "seq": …}`, or `{"error": …}`).
 * `js.publish` turns each message into a request of its own: a reply entry,
 * a timer and an error object per message, which made the relay's publishing
 * a fifth of its CPU. Here one subscription on a private inbox takes every
 * acknowledgement of the connection, each message's reply subject is that
 * inbox plus a counter, and a batch has one counter of acknowledgements
 * still missing and one deadline: how the NATS clients' asynchronous
 * JetStream publish (Go's PublishAsync) works.
 */
class PublishAcks {
  readonly #nc: NatsConnection;
  readonly #inbox: string;
  readonly #waiting = new Map<number, PendingBatch>();
  #next = 0;

  constructor(nc: NatsConnection) {
    this.#nc = nc;
    this.#inbox = createInbox();
    // The client subscribes again by itself after a reconnect.
    nc.subscribe(`${this.#inbox}.*`, {
      callback: (error, msg) => (error ? this.#failAll(error) : this.#acknowledged(msg)),
    });
  }

  /**
   * Publishes each message in order on this connection and resolves when the
   * stream has stored (or recognised as a duplicate) every one; rejects with
   * the first refusal, or when `timeoutMs` passes first.
   */
  publish(
    messages: readonly { subject: string; data: string; headers: ReturnType<typeof headers> }[],
    timeoutMs: number,
  ): Promise<void> {
    const tokens: number[] = [];
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => settle(new Error(`NATS publish timed out after ${timeoutMs} ms`)), timeoutMs);
      const settle = (error?: Error) => {
        clearTimeout(timer);
        for (const t of tokens) this.#waiting.delete(t);
        if (error) reject(error);
        else resolve();
      };
      const batch: PendingBatch = { waiting: messages.length, resolve: () => settle(), reject: settle };
      try {
        for (const message of messages) {
          const t = this.#next++;
          tokens.push(t);
          this.#waiting.set(t, batch);
          this.#nc.publish(message.subject, message.data, { headers: message.headers, reply: `${this.#inbox}.${t}` });
        }
      } catch (error) {
        settle(error instanceof Error ? error : new Error(String(error)));
      }
    });
  }

  #acknowledged(msg: Msg): void {
    const t = Number(msg.subject.slice(this.#inbox.length + 1));
    const batch = this.#waiting.get(t);
    if (!batch) return; // late: its batch already failed or timed out
    this.#waiting.delete(t);
    const refusal = pubAckError(msg);
    if (refusal) batch.reject(refusal);
    else if (--batch.waiting === 0) batch.resolve();
  }

  #failAll(error: Error): void {
    for (const batch of new Set(this.#waiting.values())) batch.reject(error);
  }
}

/** Why JetStream did not store a published message, or undefined if it did (a PubAck naming the stream). */
/**
 * A dead letter's id (or a listing cursor) as the stream sequence it names:
 * JetStream numbers messages from 1 and refuses a request for 0 as a bad
 * request, not as "no message"; undefined for anything that is not a
 * sequence (it names no letter).
 */
function streamSequence(id: string): number | undefined {
  return /^[1-9]\d{0,14}$/.test(id) ? Number(id) : undefined;
}

function pubAckError(msg: Msg): Error | undefined {
  // 503: nothing listens on the subject, i.e. no stream captures it.
  if (msg.headers?.hasError)
    return new Error(`JetStream did not take the message: ${msg.headers.code} ${msg.headers.description}`);
  let ack: { stream?: string; error?: { code?: number; err_code?: number; description?: string } };
  try {
    ack = JSON.parse(msg.string()) as typeof ack;
  } catch {
    return new Error('JetStream answered a publish with something other than a PubAck');
  }
  if (ack.error)
    return new Error(
      `JetStream refused the message: ${ack.error.description ?? 'no description'} (${ack.error.err_code ?? ack.error.code})`,
    );
  return ack.stream ? undefined : new Error('JetStream answered a publish without naming a stream');
}

/** Stream and consumer names allow neither dots nor wildcards. */
function token(name: string): string {
  return name.replace(/[^A-Za-z0-9_-]/g, '_');
}

export class NatsBroker implements Broker, BrokerDeadLetters {
  readonly kind = 'nats';
  readonly #url: URL;
  readonly #log: Logger;
  readonly #prefix: string;
  readonly #stream: string;
  readonly #publishTimeoutMs: number;
  readonly #ackWaitMs: number;
  readonly #duplicateWindowMs: number;
  readonly #streamReplicas: number;
  readonly #defaultMaxAttempts: number;
  #connection: Promise<Connected> | undefined;
  readonly #consumers = new Map<string, Promise<void>>();
  readonly #subscriptions = new Set<Subscription>();
  #closed = false;

  constructor(url: string, log: Logger, options: NatsBrokerOptions = {}) {
    this.#url = new URL(url);
    this.#log = log;
    this.#prefix = options.prefix ?? DEFAULT_BROKER_PREFIX;
    this.#stream = token(this.#prefix).toUpperCase();
    this.#publishTimeoutMs = options.publishTimeoutMs ?? BROKER.publishTimeoutMs;
    this.#ackWaitMs = options.ackWaitMs ?? BROKER.natsAckWaitMs;
    this.#duplicateWindowMs = options.duplicateWindowMs ?? BROKER.natsDuplicateWindowMs;
    this.#streamReplicas = options.streamReplicas ?? 1;
    this.#defaultMaxAttempts = options.defaultMaxAttempts ?? JOBS.maxAttempts;
  }

  /** The JetStream stream holding every subject of this prefix. */
  get stream(): string {
    return this.#stream;
  }

  subject(queue: string): string {
    return `${this.#prefix}.q.${queue}`;
  }

  deadSubject(queue: string): string {
    return `${this.#prefix}.dead.${queue}`;
  }

  // Connected lazily and again after a failed attempt, so a process starts
  // while the broker is down and picks it up when it returns. Once connected,
  // the client reconnects by itself for as long as the process runs.
  #connect(): Promise<Connected> {
    if (this.#closed) return Promise.reject(new Error('the NATS broker adapter is closed'));
    if (this.#connection) return this.#connection;
    const attempt = (async () => {
      const nc = await connect({
        servers: `${this.#url.hostname}:${this.#url.port || '4222'}`,
        ...(this.#url.username
          ? { user: decodeURIComponent(this.#url.username), pass: decodeURIComponent(this.#url.password) }
          : {}),
        name: `orderflow-${this.#prefix}`,
        timeout: BROKER.connectTimeoutMs,
        maxReconnectAttempts: -1,
        reconnectTimeWait: BROKER.natsReconnectWaitMs,
      });
      const link = { up: true };
      void (async () => {
        for await (const status of nc.status()) {
          if (status.type === 'disconnect') {
            link.up = false;
            this.#log.warn({ server: status.server }, 'NATS connection lost; the client reconnects by itself');
          } else if (status.type === 'reconnect') {
            link.up = true;
            this.#log.info({ server: status.server }, 'NATS connection is back');
          } else if (status.type === 'error') {
            this.#log.warn({ err: status.error }, 'NATS server reported an error');
          }
        }
        link.up = false;
      })().catch((error: unknown) => {
        link.up = false;
        this.#log.error({ err: error }, 'NATS connection status stopped; the connection counts as down');
      });
      try {
        const jsm = await jetstreamManager(nc);
        await this.#ensureStream(jsm);
        return { nc, js: jetstream(nc), jsm, acks: new PublishAcks(nc), link };
      } catch (error) {
        await nc.close();
        throw error;
      }
    })();
    this.#connection = attempt;
    attempt.catch(() => {
      if (this.#connection === attempt) this.#connection = undefined;
    });
    return attempt;
  }

  async #ensureStream(jsm: JetStreamManager): Promise<void> {
    try {
      await jsm.streams.add({
        name: this.#stream,
        subjects: [`${this.#prefix}.>`],
        retention: RetentionPolicy.Workqueue,
        storage: StorageType.File,
        duplicate_window: nanos(this.#duplicateWindowMs),
        num_replicas: this.#streamReplicas,
      });
    } catch (error) {
      // Created earlier with other settings (an operator's choice): use it as it is.
      await jsm.streams.info(this.#stream).catch(() => {
        throw error;
      });
    }
  }

  #ensureConsumer(jsm: JetStreamManager, queue: string): Promise<void> {
    let ready = this.#consumers.get(queue);
    if (!ready) {
      ready = (async () => {
        try {
          await jsm.consumers.add(this.#stream, {
            durable_name: token(queue),
            filter_subject: this.subject(queue),
            ack_policy: AckPolicy.Explicit,
            deliver_policy: DeliverPolicy.All,
            ack_wait: nanos(this.#ackWaitMs),
            // Attempts are counted and dead-lettered by the consumer side.
            max_deliver: -1,
          });
        } catch (error) {
          await jsm.consumers.info(this.#stream, token(queue)).catch(() => {
            throw error;
          });
        }
      })();
      this.#consumers.set(queue, ready);
      ready.catch(() => this.#consumers.delete(queue));
    }
    return ready;
  }

  async publish(messages: readonly OutgoingMessage[]): Promise<void> {
    if (messages.length === 0) return;
    const { acks } = await this.#connect();
    // One connection writes in call order, so the stream stores the batch in
    // the relay's (id) order; all acknowledgements are awaited together.
    await acks.publish(
      messages.map((message) => {
        const h = headers();
        h.set(MAX_ATTEMPTS_HEADER, String(message.maxAttempts));
        h.set(MSG_ID_HEADER, message.id);
        for (const [name, value] of Object.entries(traceHeaders(message.trace))) h.set(name, value);
        return { subject: this.subject(message.queue), data: JSON.stringify(message.payload), headers: h };
      }),
      this.#publishTimeoutMs,
    );
  }

  consume(queue: string, handler: DeliveryHandler, options: { concurrency: number }): Subscription {
    return consumeLoop(
      { name: 'NATS', log: this.#log, live: this.#subscriptions },
      queue,
      handler,
      options,
      (session) => this.#subscribeOnce(queue, session),
    );
  }

  /**
   * Pulls exactly as many messages as there are free handler slots, and
   * never blocks the iterator: a consume() iterator held back while the
   * handlers are busy stops refilling its pull requests, and deliveries
   * stall until they expire. A fetch ends when it has its batch or after
   * BROKER.natsFetchExpiresMs, so an idle queue costs one cheap request per
   * interval.
   */
  async #subscribeOnce(queue: string, session: ConsumeSession): Promise<ConsumeAttempt> {
    const { js, jsm } = await this.#connect();
    await this.#ensureConsumer(jsm, queue);
    const consumer = await js.consumers.get(this.#stream, token(queue));
    let current: ConsumerMessages | undefined;
    const done = (async () => {
      while (!session.stopping()) {
        const free = session.free();
        if (free <= 0) {
          await session.slotFreed();
          continue;
        }
        current = await consumer.fetch({ max_messages: free, expires: BROKER.natsFetchExpiresMs });
        if (session.stopping()) current.stop();
        for await (const msg of current) {
          // Handed back at once instead of waiting out the ack wait.
          if (session.stopping()) msg.nak();
          else session.deliver(this.#delivery(queue, msg));
        }
      }
    })();
    return { done, stop: async () => current?.stop() };
  }

  #delivery(queue: string, msg: JsMsg): Delivery {
    const maxAttempts = attemptCount(msg.headers?.get(MAX_ATTEMPTS_HEADER), this.#defaultMaxAttempts);
    return {
      id: msg.headers?.get(MSG_ID_HEADER) || `nats-${msg.seq}`,
      queue,
      body: msg.string(),
      attempt: msg.info.deliveryCount,
      maxAttempts,
      trace: { traceparent: msg.headers?.get('traceparent'), tracestate: msg.headers?.get('tracestate') },
      ack: async () => msg.ack(),
      retry: async (delayMs) => msg.nak(Math.max(0, Math.round(delayMs))),
      deadLetter: async (reason) => {
        const { js } = await this.#connect();
        const h = headers();
        h.set(MAX_ATTEMPTS_HEADER, String(maxAttempts));
        // Header values are single lines.
        h.set(DEAD_REASON_HEADER, reason.replace(/[\r\n]+/g, ' ').slice(0, 500));
        h.set('Orderflow-Message-Id', msg.headers?.get(MSG_ID_HEADER) ?? '');
        h.set(DEAD_ATTEMPTS_HEADER, String(msg.info.deliveryCount));
        // Parked first, then forgotten: a crash in between parks it twice, never loses it.
        await js.publish(this.deadSubject(queue), msg.data, { headers: h, timeout: this.#publishTimeoutMs });
        msg.term();
      },
    };
  }

  async #subjectCount(subject: string): Promise<number> {
    const { jsm, link } = await this.#connect();
    // While the client reconnects, a request would wait for the broker (a
    // metrics scrape with it); a count is worth nothing late.
    if (!link.up) throw new Error('NATS is unreachable; the client is reconnecting');
    // In a work-queue stream a message stays stored until it is acknowledged,
    // so this counts waiting, delayed and in-flight messages alike.
    const info = await withTimeout(
      'NATS stream info',
      this.#publishTimeoutMs,
      jsm.streams.info(this.#stream, { subjects_filter: subject }),
    );
    return info.state.subjects?.[subject] ?? 0;
  }

  pending(queue: string): Promise<number> {
    return this.#subjectCount(this.subject(queue));
  }

  deadLettered(queue: string): Promise<number> {
    return this.#subjectCount(this.deadSubject(queue));
  }

  /**
   * Dead letters read in place by stream sequence (a direct "next message on
   * these subjects" request each): nothing is consumed, so listing never
   * disturbs them. The cursor is the last sequence read.
   */
  async listDead(queues: readonly string[], options: { limit: number; after?: string }): Promise<DeadLetterPage> {
    if (options.after !== undefined && streamSequence(options.after) === undefined) throw invalidDeadLetterCursor();
    const items: DeadLetter[] = [];
    if (queues.length === 0) return { items, next: undefined };
    const { jsm } = await this.#connect();
    const subject = queues.length === 1 ? this.deadSubject(queues[0]!) : `${this.#prefix}.dead.>`;
    let seq = options.after === undefined ? 1 : Number(options.after) + 1;
    let more = false;
    for (;;) {
      // A "next by subject" request (NATS 2.9+): the client's type lists only the other request forms.
      const query = { seq, next_by_subj: subject } as unknown as { seq: number };
      const stored = await withTimeout(
        'NATS message get',
        this.#publishTimeoutMs,
        jsm.streams.getMessage(this.#stream, query),
      );
      if (!stored) break;
      seq = stored.seq + 1;
      const letter = this.#deadLetter(stored);
      if (!queues.includes(letter.queue)) continue;
      if (items.length === options.limit) {
        more = true;
        break;
      }
      items.push(letter);
    }
    return { items, next: more ? items.at(-1)?.id : undefined };
  }

  async settleDead(
    queues: readonly string[],
    ids: readonly string[],
    settle: (letter: DeadLetter) => Promise<void>,
  ): Promise<void> {
    const { jsm } = await this.#connect();
    for (const id of ids) {
      const seq = streamSequence(id);
      if (seq === undefined) continue;
      let stored;
      try {
        stored = await withTimeout(
          'NATS message get',
          this.#publishTimeoutMs,
          jsm.streams.getMessage(this.#stream, { seq }),
        );
      } catch (error) {
        // Deleted or never there (JetStream answers 404 "no message found").
        if (/no message found/i.test((error as Error).message)) continue;
        throw error;
      }
      if (!stored || !stored.subject.startsWith(`${this.#prefix}.dead.`)) continue;
      const letter = this.#deadLetter(stored);
      if (!queues.includes(letter.queue)) continue;
      try {
        await settle(letter);
      } catch {
        continue; // left in place; the caller has the error
      }
      try {
        await withTimeout(
          'NATS message delete',
          this.#publishTimeoutMs,
          jsm.streams.deleteMessage(this.#stream, stored.seq),
        );
      } catch (error) {
        // Removed meanwhile by a settle that found it settled (see messaging/dead-letters.ts): gone either way.
        if (!/no message found/i.test((error as Error).message)) throw error;
      }
    }
  }

  #deadLetter(stored: {
    seq: number;
    subject: string;
    time: Date;
    header?: { get(name: string): string } | undefined;
    string(): string;
  }): DeadLetter {
    const attempts = Number(stored.header?.get(DEAD_ATTEMPTS_HEADER) || NaN);
    return {
      id: String(stored.seq),
      queue: stored.subject.slice(`${this.#prefix}.dead.`.length),
      body: stored.string(),
      reason: stored.header?.get(DEAD_REASON_HEADER) ?? '',
      attempts: Number.isSafeInteger(attempts) ? attempts : null,
      diedAt: stored.time.toISOString(),
      key: null,
    };
  }

  /** Deletes the stream with its consumers and messages, every queue's (tests and teardown); the names are RabbitMQ's need. */
  async deleteTopology(_queues?: readonly string[]): Promise<void> {
    const { jsm } = await this.#connect();
    await jsm.streams.delete(this.#stream).catch(() => false);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await Promise.allSettled([...this.#subscriptions].map((s) => s.stop()));
    this.#closed = true;
    const connection = this.#connection;
    this.#connection = undefined;
    const connected = await connection?.catch(() => undefined);
    await connected?.nc.close();
  }
}
