// The built-in simulated gateway: the behaviour of the contract's Stripe-like
// gateway, in memory. Replays of an idempotency key return the first answer
// (also while that first call is still in flight), test tokens behave as the
// contract says, and a ledger lets tests count money outside Orderflow. Like
// a real gateway it refuses, as a request error (400), an amount that is not
// a positive safe integer of minor units and a refund larger than its charge.
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
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

export interface SimulatedGatewayOptions {
  latencyMs?: number;
  /** Probability that tok_flaky fails an attempt with 503. */
  flakyFailureRate?: number;
}

/** A refund of a charge the gateway does not know: a request error (404), as over HTTP. */
class UnknownChargeError extends GatewayRequestError {
  constructor(chargeId: string) {
    super(404, `no such charge: ${chargeId}`);
    this.name = 'UnknownChargeError';
  }
}

export class SimulatedGateway implements PaymentGateway {
  readonly charges = new Map<string, LedgerCharge>();
  readonly refunds = new Map<string, LedgerRefund>();
  readonly #chargeReplies = new Map<string, Promise<ChargeResult>>();
  readonly #refundReplies = new Map<string, Promise<{ refundId: string }>>();
  readonly #latencyMs: number;
  readonly #flakyFailureRate: number;
  /** Charge keys voided with nothing charged under them: a charge sent with one is declined. */
  readonly voided = new Set<string>();
  /** Every charge call received, replays included: proves retries happened. */
  chargeCalls = 0;
  /** Every void call received. */
  voidCalls = 0;

  constructor(options: SimulatedGatewayOptions = {}) {
    this.#latencyMs = options.latencyMs ?? 0;
    this.#flakyFailureRate = options.flakyFailureRate ?? 0.5;
  }

  charge(request: ChargeRequest): Promise<ChargeResult> {
    this.chargeCalls++;
    return this.#once(this.#chargeReplies, `${request.idempotencyKey}`, async () => {
      await this.#latency();
      const invalid = amountProblem(request.amountCents);
      if (invalid !== undefined) throw new GatewayRequestError(400, `simulated gateway: ${invalid}`);
      if (request.token === 'tok_flaky' && Math.random() < this.#flakyFailureRate) {
        throw new TransientGatewayError('simulated gateway: 503 Service Unavailable (tok_flaky)');
      }
      if (request.token === 'tok_declined') return { status: 'declined', code: 'card_declined' } as const;
      const id = `ch_${randomUUID().replaceAll('-', '')}`;
      this.charges.set(id, {
        id,
        reference: request.reference,
        amountCents: request.amountCents,
        currency: request.currency,
      });
      return { status: 'succeeded', chargeId: id } as const;
    });
  }

  refund(request: RefundRequest): Promise<{ refundId: string }> {
    return this.#once(this.#refundReplies, request.idempotencyKey, async () => {
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
      const id = `re_${randomUUID().replaceAll('-', '')}`;
      this.refunds.set(id, { id, chargeId: request.chargeId, amountCents: request.amountCents });
      return { refundId: id };
    });
  }

  async voidCharge(request: VoidRequest): Promise<VoidResult> {
    this.voidCalls++;
    await this.#latency();
    // The key's first answer decides, as for a replay; a charge still in
    // flight is waited for. Only a key with no answer, and no call in flight,
    // is voided: its place is taken by a decline, so that a charge arriving
    // later can never be made under it.
    for (;;) {
      if (this.voided.has(request.chargeKey)) return { status: 'voided' };
      const existing = this.#chargeReplies.get(request.chargeKey);
      if (!existing) {
        this.voided.add(request.chargeKey);
        this.#chargeReplies.set(request.chargeKey, Promise.resolve({ status: 'declined', code: 'charge_voided' }));
        return { status: 'voided' };
      }
      try {
        return await existing;
      } catch {
        // A failed call is forgotten (see #once): the key is free again, so look once more.
      }
    }
  }

  /** Net amount charged for an order reference: charges minus refunds. */
  netCharged(reference: string): { charges: number; netCents: number } {
    let charges = 0;
    let netCents = 0;
    for (const charge of this.charges.values()) {
      if (charge.reference !== reference) continue;
      charges++;
      netCents += charge.amountCents;
      for (const refund of this.refunds.values()) if (refund.chargeId === charge.id) netCents -= refund.amountCents;
    }
    return { charges, netCents };
  }

  // A transient failure is not an answer: it is forgotten, so the next replay
  // tries again, as a real gateway does for a request it never completed.
  #once<T>(replies: Map<string, Promise<T>>, key: string, run: () => Promise<T>): Promise<T> {
    const existing = replies.get(key);
    if (existing) return existing;
    const reply = run();
    replies.set(key, reply);
    reply.catch(() => replies.delete(key));
    return reply;
  }

  async #latency(): Promise<void> {
    if (this.#latencyMs > 0) await sleep(this.#latencyMs);
  }
}
