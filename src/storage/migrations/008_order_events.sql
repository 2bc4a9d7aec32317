-- Every order's history, one row per thing that happened to it, written in
-- the transaction that made it happen (accept, payment outcome, cancel,
-- refund, an operator's re-drive), so the log can never disagree with the
-- order's row. Append-only: the trigger below refuses UPDATE and DELETE, so
-- no code path, ours or an operator's psql, can rewrite the past.
CREATE TABLE orders.order_events (
  id       bigserial PRIMARY KEY,
  order_id text NOT NULL,
  type     text NOT NULL CHECK (type IN ('accepted', 'stock_held', 'charge_attempted', 'charged', 'confirmed', 'rejected',
                                        'cancel_requested', 'refund_requested', 'refunded', 'refund_failed', 'redriven', 'dead_letter_discarded')),
  -- What the event carries (a reason, an amount, a charge id, who acted), camelCase JSON.
  detail   jsonb NOT NULL DEFAULT '{}',
  at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_events_order ON orders.order_events (order_id, id);

-- A one-line function body: migrations are split into statements at a
-- semicolon that ends a line.
CREATE FUNCTION orders.order_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'orders.order_events is append-only: % is not allowed', TG_OP; END $$;
CREATE TRIGGER order_events_append_only BEFORE UPDATE OR DELETE ON orders.order_events
  FOR EACH ROW EXECUTE FUNCTION orders.order_events_append_only();

-- Order search by SKU (the admin API) reads the lines by SKU.
CREATE INDEX order_lines_sku ON orders.order_lines (sku, order_id);
-- ...and by time range, newest first.
CREATE INDEX orders_created_at ON orders.orders (created_at DESC);

-- Live figures: each process replaces its own row about once a second with
-- what it measured over that second (orders per second, latencies, backlog,
-- gateway and breaker, batch sizes). The console's stream reads every row
-- that is fresh, so it shows every process of a distributed deployment, not
-- only the one the browser reached. Rows of processes that stopped are
-- removed by the survivors once stale. The admin module owns it.
CREATE SCHEMA IF NOT EXISTS admin;
CREATE TABLE admin.process_figures (
  process_id text PRIMARY KEY,
  role       text NOT NULL,
  host       text NOT NULL,
  pid        int NOT NULL,
  started_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  figures    jsonb NOT NULL
);
