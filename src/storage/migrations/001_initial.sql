-- One schema per module: a module reads and writes only its own tables and
-- reaches the others through their public functions (or events, once split).

CREATE SCHEMA IF NOT EXISTS catalog;
CREATE SCHEMA IF NOT EXISTS inventory;
CREATE SCHEMA IF NOT EXISTS orders;
CREATE SCHEMA IF NOT EXISTS payments;
CREATE SCHEMA IF NOT EXISTS messaging;

CREATE TABLE catalog.products (
  sku         text PRIMARY KEY CHECK (sku ~ '^[A-Za-z0-9._-]{1,64}$'),
  name        text NOT NULL,
  price_cents bigint NOT NULL CHECK (price_cents >= 0),
  currency    char(3) NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);

-- on_hand is the stock a merchant set; held is what pending and confirmed
-- orders hold of it. available = on_hand - held never goes below zero, which
-- is the no-oversell promise enforced by the database itself.
CREATE TABLE inventory.stock (
  sku     text PRIMARY KEY,
  on_hand bigint NOT NULL CHECK (on_hand >= 0),
  held    bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
  CHECK (held <= on_hand)
);

CREATE TABLE orders.orders (
  id            text PRIMARY KEY,
  -- Insertion order: the newest-first listing and its cursor.
  seq           bigserial NOT NULL UNIQUE,
  customer_id   text NOT NULL,
  status        text NOT NULL CHECK (status IN ('pending', 'confirmed', 'rejected', 'cancelled')),
  total_cents   bigint NOT NULL,
  currency      char(3) NOT NULL,
  reject_reason text CHECK (reject_reason IN ('out_of_stock', 'payment_declined', 'payment_failed')),
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
);
-- Newest-first listing per customer and for admins, and the pending sweeper.
CREATE INDEX orders_customer_seq ON orders.orders (customer_id, seq DESC);
CREATE INDEX orders_status_seq ON orders.orders (status, seq DESC);
CREATE INDEX orders_pending ON orders.orders (updated_at) WHERE status = 'pending';

CREATE TABLE orders.order_lines (
  order_id    text NOT NULL REFERENCES orders.orders (id),
  line_no     int NOT NULL,
  sku         text NOT NULL,
  quantity    int NOT NULL CHECK (quantity > 0),
  price_cents bigint NOT NULL,
  PRIMARY KEY (order_id, line_no)
);

-- One row per (customer, Idempotency-Key); the body hash tells a replay from
-- a different request that reuses a key.
CREATE TABLE orders.idempotency_keys (
  customer_id  text NOT NULL,
  key          text NOT NULL,
  request_hash text NOT NULL,
  order_id     text NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (customer_id, key)
);

-- The payment of one order. status follows what we know of the gateway:
-- pending (never sent), charging (sent at least once: a charge may exist),
-- succeeded, declined, refunded.
CREATE TABLE payments.payments (
  order_id     text PRIMARY KEY,
  amount_cents bigint NOT NULL,
  currency     char(3) NOT NULL,
  card_token   text NOT NULL,
  status       text NOT NULL CHECK (status IN ('pending', 'charging', 'succeeded', 'declined', 'refunded')),
  charge_id    text,
  refund_id    text,
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now()
);

-- The database-backed job queue. A job is claimed with FOR UPDATE SKIP LOCKED,
-- leased until locked_until, and deleted when its handler succeeds.
CREATE TABLE messaging.jobs (
  id           bigserial PRIMARY KEY,
  queue        text NOT NULL,
  payload      jsonb NOT NULL,
  -- At most one live job per key: re-driving an order never queues it twice.
  key          text UNIQUE,
  run_at       timestamptz NOT NULL DEFAULT now(),
  attempts     int NOT NULL DEFAULT 0,
  max_attempts int NOT NULL,
  locked_until timestamptz,
  last_error   text,
  created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_ready ON messaging.jobs (queue, run_at, id);

-- Jobs that failed max_attempts times, kept for an operator to inspect and re-drive.
CREATE TABLE messaging.dead_jobs (
  id         bigint PRIMARY KEY,
  queue      text NOT NULL,
  payload    jsonb NOT NULL,
  key        text,
  attempts   int NOT NULL,
  last_error text,
  created_at timestamptz NOT NULL,
  died_at    timestamptz NOT NULL DEFAULT now()
);
