// The built-in simulated gateway: the behaviour of the contract's Stripe-like
// gateway, in memory. Replays of an idempotency key return the first answer
// (also while that first call is still in flight), test tokens behave as the
// contract says, and a ledger lets tests count money outside Orderflow. Like
// a real gateway it refuses, as a request error (400), an amount that is not
// a positive safe integer of minor units and a refund larger than its charge.
//
// Like a real gateway it also forgets. Stripe keeps an idempotency key's
// answer for at least 24 hours and then may answer a replay as a new request
// (https://docs.stripe.com/api/idempotent_requests: "Keys are eligible to be
// removed from the system automatically after they're at least 24 hours
// old"). A simulator living in a serving process cannot hold a day of traffic
// at hundreds of orders a second in a 160 MB heap, so by default it keeps
// each settled answer, and the charge or refund it made, for a window longer
// than Orderflow's own replay horizon (retentionFor), and never more than a
// count cap of them, oldest forgotten first. Past that:
//   - a replay of a forgotten charge key is a new request (it charges again),
//     as at Stripe after 24 hours;
//   - a refund of a forgotten charge is a request error, 404 "no such
//     charge", as a gateway answers a charge id it does not know;
//   - a forgotten voided key can be charged.
// Tests and benchmarks that check every order against the ledger ask for
// `retain: 'all'` instead.
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { BROKER, DATABASE_QUEUE, GATEWAY, JOBS, PAYMENTS, SIMULATED_GATEWAY } from '../tunables.ts';
import {
  amountProblem,
  GatewayRequestError,
  TransientGatewayError,
  type ChargeRequest,
  type ChargeResult,
  type PaymentGateway,
  type RefundRequest,
  type VoidRequest,
  type VoidResult,
} from './gateway.ts';

export interface LedgerCharge {
  id: string;
  reference: string;
  amountCents: number;
  currency: string;
}

export interface LedgerRefund {
  id: string;
  chargeId: string;
  amountCents: number;
}

/**
 * What the gateway remembers of settled calls: 'all' (tests, benchmarks that
 * check the whole ledger), or each settled answer for at least windowMs and
 * at most maxEntries of them (per kind: charge keys, refund keys), oldest
 * forgotten first.
 */
export type Retention = 'all' | { windowMs: number; maxEntries: number };

export interface SimulatedGatewayOptions {
  latencyMs?: number;
  /** Probability that tok_flaky fails an attempt with 503. */
  flakyFailureRate?: number;
  /** Default: retentionFor(60 s), the window for the default PENDING_DEADLINE_MS, and SIMULATED_GATEWAY.maxEntries. */
  retain?: Retention;
  /** The clock the window is measured on, in ms (tests move it by hand). Default Date.now. */
  now?: () => number;
}

/**
 * The longest time, in ms, after a charge or refund key got its first answer
 * within which Orderflow may still send that key again while its database,
 * broker and gateway are up: the answer was lost (a timeout after the
 * gateway acted, a worker that died before recording it) and
 *   1. the job's own attempts replay it: JOBS.maxAttempts attempts, each a
 *      gateway call of GATEWAY.maxAttempts tries of attemptTimeoutMs with
 *      backoff of at most backoff.maxMs between them, the job's backoffs
 *      between attempts, and one lease (or ack wait) for a worker that died
 *      holding it: 10 × 13 s + 243 s + 60 s = 433 s;
 *   2. then the sweeper re-drives the order (or refund) still pending past
 *      the deadline, within deadline + its interval, and the new job lives
 *      as long again.
 * With the default PENDING_DEADLINE_MS (60 s): 2 × 433 + 60 + 15 = 941 s.
 * An outage of the database stretches it by its length: nothing is recorded
 * while it lasts.
 */
export function replayHorizonMs(pendingDeadlineMs: number): number {
  const gatewayCallMs =
    GATEWAY.maxAttempts * GATEWAY.attemptTimeoutMs + (GATEWAY.maxAttempts - 1) * GATEWAY.backoff.maxMs;
  let jobBackoffsMs = 0;
  for (let attempt = 1; attempt < JOBS.maxAttempts; attempt++)
    jobBackoffsMs += Math.min(JOBS.retry.maxMs, JOBS.retry.baseMs * 2 ** (attempt - 1));
  const jobLifeMs =
    JOBS.maxAttempts * gatewayCallMs + jobBackoffsMs + Math.max(DATABASE_QUEUE.leaseMs, BROKER.natsAckWaitMs);
  const sweepIntervalMs = Math.max(PAYMENTS.sweepMinIntervalMs, Math.floor(pendingDeadlineMs / 4));
  return 2 * jobLifeMs + pendingDeadlineMs + sweepIntervalMs;
}

/**
 * The retention of a simulated gateway serving an Orderflow whose sweeper
 * deadline is pendingDeadlineMs: twice its replay horizon, at least
 * SIMULATED_GATEWAY.minRetentionMs (1 h), and at most maxEntries answers of
 * each kind (SIMULATED_GATEWAY_MAX_ENTRIES, default SIMULATED_GATEWAY.maxEntries). The count wins above
 * maxEntries / window orders a second (~28/s for the default 1 h window);
 * the horizon is still covered up to maxEntries / horizon (~106/s).
 */
export function retentionFor(pendingDeadlineMs: number, maxEntries: number = SIMULATED_GATEWAY.maxEntries): Retention {
  return {
    windowMs: Math.max(SIMULATED_GATEWAY.minRetentionMs, 2 * replayHorizonMs(pendingDeadlineMs)),
    maxEntries,
  };
}

/** A refund of a charge the gateway does not know: a request error (404), as over HTTP. */
class UnknownChargeError extends GatewayRequestError {
  constructor(chargeId: string) {
    super(404, `no such charge: ${chargeId}`);
    this.name = 'UnknownChargeError';
  }
}

// Settled answers that are not a charge are shared: a decline holds no
// memory of its own beyond its key.
type Declined = Extract<ChargeResult, { status: 'declined' }>;
const DECLINED: Declined = Object.freeze({ status: 'declined', code: 'card_declined' });
const VOIDED: Declined = Object.freeze({ status: 'declined', code: 'charge_voided' });
type ChargeAnswer = LedgerCharge | Declined;

/**
 * Settled answers by idempotency key, forgotten oldest first past the
 * window or the cap. Keys and insertion times sit in two arrays used as a
 * queue (a Map's oldest entry is found in O(1) only while nothing before it
 * was deleted, which eviction does all the time).
 */
class Answers<V> {
  readonly #byKey = new Map<string, V>();
  readonly #retention: Retention;
  readonly #now: () => number;
  readonly #forget: (value: V) => void;
  #keys: string[] = [];
  #times: number[] = [];
  #head = 0;
  forgotten = 0;

  constructor(retention: Retention, now: () => number, forget: (value: V) => void) {
    this.#retention = retention;
    this.#now = now;
    this.#forget = forget;
  }

  get size(): number {
    return this.#byKey.size;
  }

  get(key: string): V | undefined {
    return this.#byKey.get(key);
  }

  keysWhere(test: (value: V) => boolean): string[] {
    const keys: string[] = [];
    for (const [key, value] of this.#byKey) if (test(value)) keys.push(key);
    return keys;
  }

  /** Records the first answer of a key that has none. */
  add(key: string, value: V): void {
    this.#byKey.set(key, value);
    if (this.#retention === 'all') return;
    const now = this.#now();
    this.#keys.push(key);
    this.#times.push(now);
    this.trim(now);
  }

  /** Forgets what is past the window or over the cap. */
  trim(now = this.#now()): void {
    if (this.#retention === 'all') return;
    const { windowMs, maxEntries } = this.#retention;
    while (this.#head < this.#keys.length) {
      if (this.#byKey.size <= maxEntries && now - this.#times[this.#head]! < windowMs) break;
      const key = this.#keys[this.#head++]!;
      const value = this.#byKey.get(key);
      this.#byKey.delete(key);
      this.forgotten++;
      if (value !== undefined) this.#forget(value);
    }
    // Drop the consumed front now and then: amortised O(1) a call.
    if (this.#head >= 1024 && this.#head * 2 >= this.#keys.length) {
      this.#keys = this.#keys.slice(this.#head);
      this.#times = this.#times.slice(this.#head);
      this.#head = 0;
    }
  }
}

export class SimulatedGateway implements PaymentGateway {
  /** The charges the gateway still knows, by charge id. */
  readonly charges = new Map<string, LedgerCharge>();
  /** The refunds the gateway still knows, by refund id. */
  readonly refunds = new Map<string, LedgerRefund>();
  // Calls in flight hold a promise, so a replay waits for the first answer;
  // a settled key holds only its answer.
  readonly #chargesInFlight = new Map<string, Promise<ChargeResult>>();
  readonly #refundsInFlight = new Map<string, Promise<{ refundId: string }>>();
  readonly #chargeAnswers: Answers<ChargeAnswer>;
  readonly #refundAnswers: Answers<LedgerRefund>;
  readonly #latencyMs: number;
  readonly #flakyFailureRate: number;
  /** Currency codes, shared: one string each rather than one per charge. */
  readonly #currencies = new Map<string, string>();
  /** Every charge call received, replays included: proves retries happened. */
  chargeCalls = 0;
  /** Every void call received. */
  voidCalls = 0;

  constructor(options: SimulatedGatewayOptions = {}) {
    this.#latencyMs = options.latencyMs ?? 0;
    this.#flakyFailureRate = options.flakyFailureRate ?? 0.5;
    const retention = options.retain ?? retentionFor(60_000);
    const now = options.now ?? Date.now;
    this.#chargeAnswers = new Answers<ChargeAnswer>(retention, now, (answer) => {
      if ('id' in answer) this.charges.delete(answer.id);
    });
    this.#refundAnswers = new Answers<LedgerRefund>(retention, now, (refund) => this.refunds.delete(refund.id));
  }

  /** Charge keys voided with nothing charged under them (that are still remembered): a charge sent with one is declined. */
  get voided(): ReadonlySet<string> {
    return new Set(this.#chargeAnswers.keysWhere((answer) => answer === VOIDED));
  }

  /** Settled answers remembered, and forgotten so far (past the window or the cap), per kind of key. */
  get remembered(): {
    chargeKeys: number;
    refundKeys: number;
    forgottenChargeKeys: number;
    forgottenRefundKeys: number;
  } {
    return {
      chargeKeys: this.#chargeAnswers.size,
      refundKeys: this.#refundAnswers.size,
      forgottenChargeKeys: this.#chargeAnswers.forgotten,
      forgottenRefundKeys: this.#refundAnswers.forgotten,
    };
  }

  /** Forgets what has passed the window by now (it is also done on every new answer). */
  trim(): void {
    this.#chargeAnswers.trim();
    this.#refundAnswers.trim();
  }

  charge(request: ChargeRequest): Promise<ChargeResult> {
    this.chargeCalls++;
    const key = request.idempotencyKey;
    const answer = this.#chargeAnswers.get(key);
    if (answer !== undefined) return Promise.resolve(chargeReply(answer));
    const inFlight = this.#chargesInFlight.get(key);
    if (inFlight) return inFlight;
    const reply = this.#settle(this.#chargesInFlight, key, async () => {
      await this.#latency();
      const invalid = amountProblem(request.amountCents);
      if (invalid !== undefined) throw new GatewayRequestError(400, `simulated gateway: ${invalid}`);
      if (request.token === 'tok_flaky' && Math.random() < this.#flakyFailureRate) {
        throw new TransientGatewayError('simulated gateway: 503 Service Unavailable (tok_flaky)');
      }
      if (request.token === 'tok_declined') {
        this.#chargeAnswers.add(key, DECLINED);
        return DECLINED;
      }
      const id = newId('ch_');
      const charge: LedgerCharge = {
        id,
        reference: request.reference,
        amountCents: request.amountCents,
        currency: this.#currency(request.currency),
      };
      this.charges.set(id, charge);
      this.#chargeAnswers.add(key, charge);
      return chargeReply(charge);
    });
    return reply;
  }

  refund(request: RefundRequest): Promise<{ refundId: string }> {
    const key = request.idempotencyKey;
    const answer = this.#refundAnswers.get(key);
    if (answer !== undefined) return Promise.resolve({ refundId: answer.id });
    const inFlight = this.#refundsInFlight.get(key);
    if (inFlight) return inFlight;
    return this.#settle(this.#refundsInFlight, key, async () => {
      await this.#latency();
      const charge = this.charges.get(request.chargeId);
      if (!charge) throw new UnknownChargeError(request.chargeId);
      const invalid = amountProblem(request.amountCents);
      if (invalid !== undefined) throw new GatewayRequestError(400, `simulated gateway: ${invalid}`);
      if (request.amountCents > charge.amountCents) {
        throw new GatewayRequestError(
          400,
          `simulated gateway: a refund of ${request.amountCents} is larger than its charge of ${charge.amountCents}`,
        );
      }
      const refund: LedgerRefund = {
        id: newId('re_'),
        chargeId: charge.id,
        amountCents: request.amountCents,
      };
      this.refunds.set(refund.id, refund);
      this.#refundAnswers.add(key, refund);
      return { refundId: refund.id };
    });
  }

  async voidCharge(request: VoidRequest): Promise<VoidResult> {
    this.voidCalls++;
    await this.#latency();
    // The key's first answer decides, as for a replay; a charge still in
    // flight is waited for. Only a key with no answer, and no call in flight,
    // is voided: its place is taken by a decline, so that a charge arriving
    // later can never be made under it (while the key is remembered).
    for (;;) {
      const answer = this.#chargeAnswers.get(request.chargeKey);
      if (answer === VOIDED) return { status: 'voided' };
      if (answer !== undefined) return chargeReply(answer);
      const inFlight = this.#chargesInFlight.get(request.chargeKey);
      if (!inFlight) {
        this.#chargeAnswers.add(request.chargeKey, VOIDED);
        return { status: 'voided' };
      }
      try {
        return await inFlight;
      } catch {
        // A failed call is forgotten (see #settle): the key is free again, so look once more.
      }
    }
  }

  /** Net amount charged for an order reference: charges minus refunds, over what the gateway still knows. */
  netCharged(reference: string): { charges: number; netCents: number } {
    const mine = new Map<string, LedgerCharge>();
    for (const charge of this.charges.values()) if (charge.reference === reference) mine.set(charge.id, charge);
    let netCents = 0;
    for (const charge of mine.values()) netCents += charge.amountCents;
    for (const refund of this.refunds.values()) if (mine.has(refund.chargeId)) netCents -= refund.amountCents;
    return { charges: mine.size, netCents };
  }

  // The call is in flight until it settles: an answer is recorded by run
  // itself (in the same tick it settles, so no replay can slip between), and
  // a failure is not an answer: it is forgotten, so the next replay tries
  // again, as a real gateway does for a request it never completed.
  #settle<T>(inFlight: Map<string, Promise<T>>, key: string, run: () => Promise<T>): Promise<T> {
    const reply = run().finally(() => inFlight.delete(key));
    inFlight.set(key, reply);
    return reply;
  }

  #currency(code: string): string {
    const known = this.#currencies.get(code);
    if (known !== undefined) return known;
    if (this.#currencies.size < 256) this.#currencies.set(code, code);
    return code;
  }

  async #latency(): Promise<void> {
    if (this.#latencyMs > 0) await sleep(this.#latencyMs);
  }
}

/**
 * A gateway id: the prefix and 32 hex digits, as one flat string. An id
 * built by concatenation (randomUUID's among them) is a rope of its pieces,
 * several hundred bytes kept for as long as the id is: ~65 B instead.
 */
function newId(prefix: 'ch_' | 're_'): string {
  return Buffer.from(`${prefix}${randomBytes(16).toString('hex')}`, 'latin1').toString('latin1');
}

function chargeReply(answer: ChargeAnswer): ChargeResult {
  return 'id' in answer ? { status: 'succeeded', chargeId: answer.id } : answer;
}
