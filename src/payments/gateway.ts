// The payment gateway port: a Stripe-like API that answers a replayed
// idempotency key with its first answer. Callers must keep one key per
// operation across every retry; that is what makes a retry safe.
//
// What a failed call means decides what happens to the payment, so it is
// told by the error's class:
//   TransientGatewayError  the gateway may not have seen the request, or
//                          could not serve it now (network error, timeout,
//                          5xx, 429): retry with the same key;
//   GatewayRequestError    the gateway did not act on this request and never
//                          will (it refused it with a 4xx, or it could not
//                          be built or sent): nothing moved under its key;
//   anything else          the call failed in a way retrying cannot fix,
//                          and money may have moved (an answer we cannot
//                          read, a programming error after sending).

export interface ChargeRequest {
  idempotencyKey: string;
  amountCents: number;
  currency: string;
  token: string;
  /** Our order id, for the gateway's records. */
  reference: string;
}

export type ChargeResult = { status: 'succeeded'; chargeId: string } | { status: 'declined'; code: string };

export interface RefundRequest {
  idempotencyKey: string;
  chargeId: string;
  amountCents: number;
}

/** A void of the charge made, or not, under a charge's idempotency key: how an unknown charge outcome is settled without charging. */
export interface VoidRequest {
  /** The charge's idempotency key (not a key of the void's own: voiding is idempotent by nature). */
  chargeKey: string;
  /** Our order id, for the gateway's records. */
  reference: string;
}

/**
 * What the gateway knows of the charge key once voided:
 *   voided       no charge was made under the key, and none ever will be (a
 *                charge sent with it later is declined, code charge_voided);
 *   succeeded    a charge exists under the key (one in flight was waited for);
 *   declined     the key's first answer was a decline: nothing was charged;
 *   unsupported  the gateway has no void (it answered 404, 405 or 501): only
 *                a replay of the charge can tell, and that may charge now.
 */
export type VoidResult = { status: 'voided' } | ChargeResult | { status: 'unsupported' };

export interface PaymentGateway {
  charge(request: ChargeRequest, signal?: AbortSignal): Promise<ChargeResult>;
  refund(request: RefundRequest, signal?: AbortSignal): Promise<{ refundId: string }>;
  /**
   * Settles a charge whose answer we never learned without making one: the
   * charge under the key if there is one, else the key is spent so that no
   * charge can be made with it, also by a request still on its way.
   */
  voidCharge(request: VoidRequest, signal?: AbortSignal): Promise<VoidResult>;
}

/** A failure worth retrying with the same idempotency key: 5xx, timeout, connection error. */
export class TransientGatewayError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TransientGatewayError';
  }
}

/**
 * The gateway did not act on the request and never will: it refused it (a
 * 4xx other than 402 and 429), or the request could not be built or sent at
 * all (status undefined). Nothing was charged or refunded under its key, and
 * retrying cannot help.
 */
export class GatewayRequestError extends Error {
  readonly status: number | undefined;
  constructor(status: number | undefined, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'GatewayRequestError';
    this.status = status;
  }
}

/**
 * The gateway answered, but not in a way we can read (a success without the
 * charge's id, say). It may have acted on the request, and a replay of the
 * key returns the same answer: retrying cannot help, and the money must be
 * settled by someone who can look.
 */
export class GatewayAnswerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GatewayAnswerError';
  }
}

/**
 * What is wrong with an amount for the gateway, or undefined if nothing is:
 * a gateway charges a positive whole number of minor units, and one sent as
 * JSON must be a safe integer (above 2^53 - 1 a number is no longer exact).
 */
export function amountProblem(amountCents: unknown): string | undefined {
  if (typeof amountCents === 'number' && Number.isSafeInteger(amountCents) && amountCents > 0) return undefined;
  const shown =
    typeof amountCents === 'bigint' ? `${amountCents}n` : (JSON.stringify(amountCents) ?? String(amountCents));
  return `amountCents must be a positive safe integer of minor units, got ${shown}`;
}
