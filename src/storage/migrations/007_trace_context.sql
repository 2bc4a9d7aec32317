-- The trace a queued message continues (W3C Trace Context: {"traceparent":
-- "00-…", "tracestate": "…"}), written with the message while tracing is on
-- and NULL otherwise. The relay sends it on in the broker message's headers;
-- the database queue's consumer reads it from the job row. It is data like
-- any other in the row: a malformed value is ignored, never trusted.
ALTER TABLE messaging.outbox ADD COLUMN trace_context jsonb;
ALTER TABLE messaging.jobs ADD COLUMN trace_context jsonb;
