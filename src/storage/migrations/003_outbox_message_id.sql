-- A message's identity outside this database. The broker deduplicates
-- publishes by message id and consumers record it in their inbox, so it must
-- never repeat: outbox ids start again at 1 on a new or restored database,
-- and a broker still remembering "message 1" from before would silently drop
-- the new one. A UUID is unique everywhere and, being stored with the row,
-- stays the same when a crash makes the relay publish the row again.
ALTER TABLE messaging.outbox ADD COLUMN message_id text NOT NULL DEFAULT gen_random_uuid()::text;
