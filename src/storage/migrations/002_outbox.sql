-- Broker mode (BROKER_URL set): messages leave through a transactional
-- outbox and are recorded in an inbox when their effect is applied. The
-- database queue (messaging.jobs) is left as it is for the modes without a
-- broker.

-- A message written in the producer's transaction, waiting for the relay.
-- The relay deletes a row once the broker has confirmed it, so the table
-- holds only what is still to be sent and stays small.
CREATE TABLE messaging.outbox (
  id           bigserial PRIMARY KEY,
  queue        text NOT NULL,
  payload      jsonb NOT NULL,
  -- At most one unsent message per key (one charge, one refund per order).
  key          text UNIQUE,
  max_attempts int NOT NULL,
  -- Not published before this time (delayed messages).
  available_at timestamptz NOT NULL DEFAULT now(),
  created_at   timestamptz NOT NULL DEFAULT now()
);

-- Message ids whose effect has been applied, written in the handler's own
-- transaction: a redelivery finds its id here and is acknowledged unhandled.
CREATE TABLE messaging.inbox (
  queue        text NOT NULL,
  message_id   text NOT NULL,
  processed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (queue, message_id)
);
-- Old rows are pruned once no redelivery can still reach them.
CREATE INDEX inbox_processed_at ON messaging.inbox (processed_at);
