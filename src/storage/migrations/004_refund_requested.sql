-- When a refund was asked for. The sweeper re-drives refunds that have not
-- settled a while after this; without it, refunds owed could only be told
-- apart from charges a confirmed order keeps by reading every order, and the
-- oldest confirmed orders would crowd out the refunds that need a re-drive.
ALTER TABLE payments.payments ADD COLUMN refund_requested_at timestamptz;
CREATE INDEX payments_refund_requested ON payments.payments (refund_requested_at) WHERE refund_requested_at IS NOT NULL;
