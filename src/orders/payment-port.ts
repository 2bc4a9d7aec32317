// What orders needs from payments, said from the orders side: open the
// payment of an accepted order, and settle one whose order will not be paid
// for. The payments module implements it (payments/payments.ts) and
// the composition root hands it in, so orders never imports payments: the
// dependency points one way, from payments to orders.
import type { TraceCarrier } from '../observability/tracing.ts';
import type { Queryable } from '../storage/database.ts';

/** An accepted order's payment: the amount in minor units of an ISO 4217 currency, and the buyer's card token. */
export interface PaymentRequest {
  orderId: string;
  amountCents: number;
  currency: string;
  token: string;
  /** The trace the charge continues: the order's request (the accept batch runs in a trace of its own). */
  trace?: TraceCarrier;
}

export interface PaymentPort {
  /** Records the payments of newly accepted orders and asks for their charges, in the caller's transaction. */
  open(tx: Queryable, payments: readonly PaymentRequest[]): Promise<void>;
  /**
   * The order will not be paid for: whatever money may have moved for it
   * goes back (a refund is asked for if a charge may exist; otherwise
   * nothing happens). In the caller's transaction; callers decide with the
   * state machine's owesRefund whether to call it.
   */
  settle(tx: Queryable, orderId: string): Promise<void>;
}
