-- A payment can now end voided: no charge was made under its key and none
-- ever will be. Either it was never sent (its order was cancelled before the
-- pay worker took it), or its charge's answer was unknown and the gateway
-- voided the key (the charge's idempotency key is spent, so a charge sent
-- with it later is declined). Before, a cancelled order that was never
-- charged kept a pending payment for ever, and an unknown answer could only
-- be learned by replaying the charge, which made a charge if there was none.
ALTER TABLE payments.payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments.payments ADD CONSTRAINT payments_status_check
  CHECK (status IN ('pending', 'charging', 'succeeded', 'declined', 'refunded', 'failed', 'refund_failed', 'voided'));

-- The history says so: charge_voided closes a refund_requested that found nothing charged.
ALTER TABLE orders.order_events DROP CONSTRAINT order_events_type_check;
ALTER TABLE orders.order_events ADD CONSTRAINT order_events_type_check
  CHECK (type IN ('accepted', 'stock_held', 'charge_attempted', 'charged', 'confirmed', 'rejected',
                  'cancel_requested', 'refund_requested', 'refunded', 'refund_failed', 'redriven', 'dead_letter_discarded',
                  'charge_voided'));
