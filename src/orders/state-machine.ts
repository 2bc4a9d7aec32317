// The order state machine. Pure: callers ask whether an event may happen and
// get the next status or a reason why not; they never throw for a forbidden
// transition, because "already confirmed" is an expected answer to a
// redelivered message, not a failure.
//
//   pending ──confirm──▶ confirmed ──cancel──▶ cancelled
//      │ └──reject──▶ rejected
//      └────cancel──▶ cancelled

export const ORDER_STATUSES = ['pending', 'confirmed', 'rejected', 'cancelled'] as const;
export type OrderStatus = (typeof ORDER_STATUSES)[number];
export type OrderEvent = 'confirm' | 'reject' | 'cancel';
export const REJECT_REASONS = ['out_of_stock', 'payment_declined', 'payment_failed'] as const;
export type RejectReason = (typeof REJECT_REASONS)[number];

/** Every (status, reason) an order can be in: reason is '' except for rejected orders. */
export const ORDER_OUTCOMES: readonly { status: OrderStatus; reason: RejectReason | '' }[] = ORDER_STATUSES.flatMap(
  (status): { status: OrderStatus; reason: RejectReason | '' }[] =>
    status === 'rejected' ? REJECT_REASONS.map((reason) => ({ status, reason })) : [{ status, reason: '' }],
);

const TRANSITIONS: Record<OrderStatus, Partial<Record<OrderEvent, OrderStatus>>> = {
  pending: { confirm: 'confirmed', reject: 'rejected', cancel: 'cancelled' },
  confirmed: { cancel: 'cancelled' },
  rejected: {},
  cancelled: {},
};

export type Transition =
  { ok: true; to: OrderStatus } | { ok: false; reason: `cannot ${OrderEvent} an order that is ${OrderStatus}` };

export function transition(from: OrderStatus, event: OrderEvent): Transition {
  const to = TRANSITIONS[from][event];
  return to === undefined ? { ok: false, reason: `cannot ${event} an order that is ${from}` } : { ok: true, to };
}

/**
 * The statuses an event may start from and the one it leads to, for callers
 * that apply it to a batch of orders at once (confirmOrders).
 */
export function transitionsOf(event: OrderEvent): { from: OrderStatus[]; to: OrderStatus } {
  const from = ORDER_STATUSES.filter((status) => TRANSITIONS[status][event] !== undefined);
  const targets = new Set(from.map((status) => TRANSITIONS[status][event]!));
  if (targets.size !== 1) throw new Error(`"${event}" does not lead to a single status`);
  return { from, to: [...targets][0]! };
}

/**
 * An operator's re-drive of a payment that failed for good (the gateway
 * refused the request, nothing was charged) puts the order back to pending,
 * so the charge can run again once the cause is fixed. Only payment_failed
 * qualifies: a decline is the card holder's answer, out_of_stock is final,
 * and the pipeline itself never re-opens an order.
 */
export function retryPayment(
  from: OrderStatus,
  reason: RejectReason | null,
): { ok: true; to: OrderStatus } | { ok: false; reason: string } {
  if (from === 'rejected' && reason === 'payment_failed') return { ok: true, to: 'pending' };
  return {
    ok: false,
    reason: `only an order rejected with payment_failed can have its payment retried; this one is ${from}${reason ? ` (${reason})` : ''}`,
  };
}

/** True once the pipeline will do nothing more with the order on its own. */
export function isTerminal(status: OrderStatus): boolean {
  return status !== 'pending';
}

/** Whether the order holds stock: pending orders reserve it, confirmed orders have sold it. */
export function holdsStock(status: OrderStatus): boolean {
  return status === 'pending' || status === 'confirmed';
}

// The rules that tie an order's status to its money. The payments module
// asks these instead of comparing statuses itself, so "when is money charged
// or given back" is decided here, next to the transitions.

/** Whether the order's charge may be made now: only a pending order is charged. */
export function awaitsPayment(status: OrderStatus | undefined): boolean {
  return status === 'pending';
}

/**
 * Whether money that may have moved for the order must go back. An order
 * keeps its charge exactly when it holds stock (pending: being paid for;
 * confirmed: paid); a rejected or cancelled order, or one that does not
 * exist (undefined), keeps nothing.
 */
export function owesRefund(status: OrderStatus | undefined): boolean {
  return status === undefined || !holdsStock(status);
}

/**
 * Whether a refund must be refused whatever asked for it: a confirmed order
 * keeps exactly one charge (cancelling it first makes it cancelled, and then
 * it is refunded).
 */
export function refusesRefund(status: OrderStatus | undefined): boolean {
  return status === 'confirmed';
}
