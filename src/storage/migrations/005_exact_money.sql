-- Money and stock are int8 columns read into JavaScript numbers, which hold
-- integers exactly only up to 2^53 - 1 (9007199254740991). The API refuses
-- far smaller amounts (MAX_ORDER_TOTAL_CENTS), and the adapters refuse to
-- read a larger value rather than round it; these checks keep one from being
-- written at all, whatever path the write takes. NOT VALID: rows written
-- before this migration are not re-checked (an operator reads them with
-- psql; the API refuses them), every new or changed row is.
ALTER TABLE catalog.products ADD CONSTRAINT products_price_cents_exact CHECK (price_cents <= 9007199254740991) NOT VALID;
ALTER TABLE inventory.stock ADD CONSTRAINT stock_on_hand_exact CHECK (on_hand <= 9007199254740991) NOT VALID;
ALTER TABLE orders.orders ADD CONSTRAINT orders_total_cents_exact CHECK (total_cents BETWEEN 0 AND 9007199254740991) NOT VALID;
ALTER TABLE orders.order_lines ADD CONSTRAINT order_lines_price_cents_exact CHECK (price_cents BETWEEN 0 AND 9007199254740991) NOT VALID;
ALTER TABLE payments.payments ADD CONSTRAINT payments_amount_cents_exact CHECK (amount_cents BETWEEN 0 AND 9007199254740991) NOT VALID;
