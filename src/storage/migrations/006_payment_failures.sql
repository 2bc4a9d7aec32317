-- A payment can now fail for good without a decline:
--   failed        the gateway refused the charge request itself (a 4xx other
--                 than 402), or it could not be sent at all: nothing was
--                 charged under its key, and nothing is owed back.
--   refund_failed the refund can never succeed as it stands (the gateway
--                 refused it, or its request cannot be built): money may
--                 still be held, and an operator must settle it. The sweeper
--                 leaves it alone, so it is not re-driven in a loop.
-- last_error keeps the reason for the operator.
ALTER TABLE payments.payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments.payments ADD CONSTRAINT payments_status_check
  CHECK (status IN ('pending', 'charging', 'succeeded', 'declined', 'refunded', 'failed', 'refund_failed'));
ALTER TABLE payments.payments ADD COLUMN last_error text;
