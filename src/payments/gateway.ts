// The payment gateway port: a Stripe-like API that answers a replayed
// idempotency key with its first answer. Callers must keep one key per
// operation across every retry; that is what makes a retry safe.

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

export interface PaymentGateway {
  charge(request: ChargeRequest, signal?: AbortSignal): Promise<ChargeResult>;
  refund(request: RefundRequest, signal?: AbortSignal): Promise<{ refundId: string }>;
}

/** A failure worth retrying with the same idempotency key: 5xx, timeout, connection error. */
export class TransientGatewayError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TransientGatewayError';
  }
}

/** The gateway refused the request itself (a 4xx other than a decline): retrying cannot help. */
export class GatewayRequestError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.name = 'GatewayRequestError';
    this.status = status;
  }
}
