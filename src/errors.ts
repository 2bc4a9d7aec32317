// The error catalogue: every error a client can see, declared once with its
// HTTP status and title. Modules throw AppError with a code from this table;
// the HTTP layer turns it into RFC 9457 problem+json (src/http/problems.ts).
// The load balancers' own answers (deploy/haproxy, deploy/nginx) use the same
// types, so a few codes here (407, 410, 425, 501, 502, 504) are only ever
// sent by them; test/lb-problems.test.ts holds their bodies to this table.

export const ERRORS = {
  validation_failed: { status: 400, title: 'The request is not valid' },
  malformed_json: { status: 400, title: 'The request body is not valid JSON' },
  duplicate_json_member: { status: 400, title: 'An object in the request body names a member twice' },
  malformed_url: { status: 400, title: 'The request URL is not validly percent-encoded' },
  // No version in the title: it is one per type (RFC 9457, section 3.1.3), and
  // HTTP/1.0 requests (and, at the load balancers, HTTP/2) are refused under it too.
  malformed_request: { status: 400, title: 'The request is not valid HTTP' },
  unauthorized: { status: 401, title: 'A valid bearer token is required' },
  forbidden: { status: 403, title: 'The token lacks the scope this operation needs' },
  dev_token_refused: {
    status: 403,
    title: 'A development token is minted only for a loopback request to a loopback address',
  },
  not_found: { status: 404, title: 'Not found' },
  method_not_allowed: { status: 405, title: 'Method not allowed' },
  proxy_authentication_required: { status: 407, title: 'Proxy authentication is required' },
  request_timeout: { status: 408, title: 'The request was not received in time' },
  sku_exists: { status: 409, title: 'A product with this SKU already exists' },
  insufficient_stock: { status: 409, title: 'Not enough available stock' },
  stock_limit_exceeded: { status: 409, title: 'The change would take stock above its maximum' },
  order_not_cancellable: { status: 409, title: 'The order can no longer be cancelled' },
  order_not_retryable: { status: 409, title: "The order's payment cannot be retried" },
  gone: { status: 410, title: 'This resource is no longer served' },
  idempotency_key_reused: { status: 422, title: 'Idempotency-Key was already used with a different request' },
  unknown_sku: { status: 422, title: 'The order names a SKU that does not exist' },
  mixed_currencies: { status: 422, title: 'All items of an order must share one currency' },
  amount_too_large: { status: 422, title: 'An order line or the order total is above the maximum amount' },
  amount_too_small: { status: 422, title: 'The order total is below the smallest amount that can be charged' },
  payload_too_large: { status: 413, title: 'The request body is larger than 64 KiB' },
  uri_too_long: { status: 414, title: 'The request URL, or a segment of its path, is too long' },
  unsupported_media_type: { status: 415, title: 'The request body must be application/json in UTF-8' },
  unsupported_content_encoding: { status: 415, title: 'The request body must not be content-encoded' },
  expectation_failed: { status: 417, title: 'The Expect header asks for something this server does not do' },
  too_early: { status: 425, title: 'The request came as TLS early data, which could be replayed' },
  rate_limited: { status: 429, title: 'Too many requests' },
  header_fields_too_large: { status: 431, title: 'The request headers are too large' },
  internal: { status: 500, title: 'Internal server error' },
  not_implemented: { status: 501, title: 'The request asks for something this server does not implement' },
  bad_gateway: { status: 502, title: 'An api process gave no valid answer; retry later' },
  unavailable: { status: 503, title: 'A dependency is unavailable; retry later' },
  gateway_timeout: { status: 504, title: 'An api process did not answer in time; retry later' },
} as const satisfies Record<string, { status: number; title: string }>;

export type ErrorCode = keyof typeof ERRORS;

export interface FieldError {
  path: string;
  message: string;
}

export class AppError extends Error {
  readonly code: ErrorCode;
  readonly errors: FieldError[] | undefined;
  constructor(code: ErrorCode, detail: string, errors?: FieldError[]) {
    super(detail);
    this.name = 'AppError';
    this.code = code;
    this.errors = errors;
  }
  get status(): number {
    return ERRORS[this.code].status;
  }
}
