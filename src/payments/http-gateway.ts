// The payment gateway over HTTP, as the contract describes it. Maps answers
// to outcomes (see gateway.ts for what each error class means):
//   2xx        success (the contract's 201; a 2xx without the charge's id is a
//              GatewayAnswerError, since the charge may exist);
//   402        decline, final;
//   408, 429, 5xx, network errors and timeouts: transient, retry with the key;
//   other 4xx  GatewayRequestError: the gateway refused the request itself.
// A request that cannot be built (an amount that is not a safe positive
// integer, a body that cannot be serialised, an argument undici refuses) is
// a GatewayRequestError too, raised before anything is sent: a local fault
// must never pass for "gateway unreachable", which would retry it and count
// it against the circuit breaker every other payment shares.
//
// One keep-alive connection pool to the gateway's origin serves every call
// (at most `connections` sockets, kept open between calls): a charge on a
// warm connection costs no TCP handshake, and the pool is addressed by path,
// so no URL is parsed and no origin looked up per call.
import { errors as undiciErrors, Pool, type Dispatcher } from 'undici';
import {
  amountProblem,
  GatewayAnswerError,
  GatewayRequestError,
  TransientGatewayError,
  type ChargeRequest,
  type ChargeResult,
  type PaymentGateway,
  type RefundRequest,
  type VoidRequest,
  type VoidResult,
} from './gateway.ts';
import { activeSpan, injectHeaders, inSpan, SpanKind } from '../observability/tracing.ts';

/**
 * Answers to a void from a gateway that has none: the route is unknown (404),
 * does not take POST (405) or is not implemented (501). The contract's
 * gateway offers charges and refunds only, so such a gateway is expected.
 */
const NO_VOID_STATUSES = new Set([404, 405, 501]);

/** What a call that carries no amount (a void) passes for it. */
const NO_AMOUNT = Symbol('no amount');

/** Statuses that say "not now" rather than "not this": 408 Request Timeout, 429 Too Many Requests (RFC 9110, RFC 6585). */
const TRANSIENT_STATUSES = new Set([408, 429]);

/** undici errors that mean the request itself is wrong, not the network: nothing was sent. */
function isRequestDefect(error: unknown): boolean {
  return (
    error instanceof undiciErrors.InvalidArgumentError ||
    error instanceof undiciErrors.NotSupportedError ||
    error instanceof undiciErrors.RequestContentLengthMismatchError ||
    error instanceof TypeError ||
    error instanceof RangeError
  );
}

export class HttpGateway implements PaymentGateway {
  /** The base URL's path without its trailing slashes ('' for none), put before each call's path. */
  readonly #pathPrefix: string;
  readonly #pool: Pool;
  /** The base URL without credentials, for spans. */
  readonly #shownUrl: string;

  /**
   * @param baseUrl the gateway's URL, http or https, optionally with a path
   *   prefix (`https://gw.example/pay/`); user and password in it are not sent.
   * @param options.timeoutMs bound on connecting, on waiting for the answer's
   *   headers and on each pause while reading its body (default 5,000 ms).
   * @param options.connections most sockets kept open to the gateway at once
   *   (default 64); calls beyond it wait for a free one.
   * @throws TypeError when baseUrl is not a URL.
   */
  constructor(baseUrl: string, options: { timeoutMs?: number; connections?: number } = {}) {
    const url = new URL(baseUrl);
    this.#pathPrefix = url.pathname.replace(/\/+$/, '');
    this.#shownUrl = withoutCredentials(baseUrl.replace(/\/+$/, ''));
    const timeout = options.timeoutMs ?? 5_000;
    this.#pool = new Pool(url.origin, {
      connections: options.connections ?? 64,
      headersTimeout: timeout,
      bodyTimeout: timeout,
      connectTimeout: timeout,
    });
  }

  async charge(req: ChargeRequest, signal?: AbortSignal): Promise<ChargeResult> {
    const { status, body } = await this.#post(
      '/v1/charges',
      req.idempotencyKey,
      req.amountCents,
      { amountCents: req.amountCents, currency: req.currency, token: req.token, reference: req.reference },
      signal,
    );
    if (status >= 200 && status < 300) return { status: 'succeeded', chargeId: answerId(body, 'charge', status) };
    if (status === 402)
      return { status: 'declined', code: typeof body?.code === 'string' ? body.code : 'card_declined' };
    throw new GatewayRequestError(status, `payment gateway refused the charge with HTTP ${status}${errorOf(body)}`);
  }

  async refund(req: RefundRequest, signal?: AbortSignal): Promise<{ refundId: string }> {
    const { status, body } = await this.#post(
      '/v1/refunds',
      req.idempotencyKey,
      req.amountCents,
      { chargeId: req.chargeId, amountCents: req.amountCents },
      signal,
    );
    if (status >= 200 && status < 300) return { refundId: answerId(body, 'refund', status) };
    throw new GatewayRequestError(status, `payment gateway refused the refund with HTTP ${status}${errorOf(body)}`);
  }

  /**
   * `POST /v1/voids` `{ chargeKey, reference }` with its own Idempotency-Key
   * (the order's void key) → 200 `{ status: "voided" }`, `{ status:
   * "succeeded", id }` or `{ status: "declined", code }`; 404, 405 or 501:
   * the gateway has no void (`unsupported`).
   */
  async voidCharge(req: VoidRequest, signal?: AbortSignal): Promise<VoidResult> {
    const { status, body } = await this.#post(
      '/v1/voids',
      `${req.chargeKey}-void`,
      NO_AMOUNT,
      { chargeKey: req.chargeKey, reference: req.reference },
      signal,
      NO_VOID_STATUSES,
    );
    if (NO_VOID_STATUSES.has(status)) return { status: 'unsupported' };
    if (status < 200 || status >= 300)
      throw new GatewayRequestError(status, `payment gateway refused the void with HTTP ${status}${errorOf(body)}`);
    if (body?.status === 'voided') return { status: 'voided' };
    if (body?.status === 'declined')
      return { status: 'declined', code: typeof body.code === 'string' ? body.code : 'card_declined' };
    if (body?.status === 'succeeded') return { status: 'succeeded', chargeId: answerId(body, 'charge', status) };
    throw new GatewayAnswerError(
      `payment gateway answered the void with HTTP ${status} but no status we know: a charge may exist`,
    );
  }

  close(): Promise<void> {
    return this.#pool.close();
  }

  /**
   * `amountCents`: checked before sending; NO_AMOUNT for a void, which moves
   * no money. `answered`: statuses the caller reads itself, also 5xx ones.
   */
  async #post(
    path: string,
    idempotencyKey: string,
    amountCents: unknown,
    payload: object,
    signal?: AbortSignal,
    answered?: ReadonlySet<number>,
  ) {
    const invalid = amountCents === NO_AMOUNT ? undefined : amountProblem(amountCents);
    if (invalid !== undefined) throw new GatewayRequestError(undefined, `payment request not sent: ${invalid}`);
    let text: string;
    try {
      text = JSON.stringify(payload);
    } catch (error) {
      throw new GatewayRequestError(
        undefined,
        `payment request not sent: its body cannot be serialised (${(error as Error).message})`,
        { cause: error },
      );
    }
    return inSpan(
      `POST ${path}`,
      { kind: SpanKind.CLIENT, attributes: { 'http.request.method': 'POST', 'url.full': this.#shownUrl + path } },
      async (span) => {
        const answer = await this.#send(this.#pathPrefix + path, idempotencyKey, text, signal, answered);
        span?.setAttribute('http.response.status_code', answer.status);
        return answer;
      },
    );
  }

  async #send(
    path: string,
    idempotencyKey: string,
    text: string,
    signal?: AbortSignal,
    answered?: ReadonlySet<number>,
  ) {
    // The gateway continues our trace (traceparent), if it traces.
    const headers: Record<string, string> = { 'content-type': 'application/json', 'idempotency-key': idempotencyKey };
    injectHeaders(headers);
    const { status, answer } = await exchange(this.#pool, { method: 'POST', path, headers, body: text }, signal);
    if ((status >= 500 || TRANSIENT_STATUSES.has(status)) && !answered?.has(status)) {
      activeSpan()?.setAttribute('http.response.status_code', status);
      throw new TransientGatewayError(`payment gateway answered HTTP ${status}`);
    }
    let body: Record<string, unknown> | undefined;
    try {
      const parsed: unknown = answer ? JSON.parse(answer) : undefined;
      body =
        typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)
          ? (parsed as Record<string, unknown>)
          : undefined;
    } catch (error) {
      // Not JSON: only a success needs its body, and answerId says so then.
      if (!(error instanceof SyntaxError)) throw error;
      body = undefined;
    }
    return { status, body };
  }
}

/**
 * One request and its whole answer, read straight from undici's dispatch
 * callbacks: no response stream is built per call (undici's `request`
 * wraps every answer in a Readable, a few hundred bytes here).
 * Resolves with the status and the body as UTF-8 text. Rejects with a
 * GatewayRequestError when undici refuses the request itself (nothing was
 * sent), else with a TransientGatewayError: unreachable, timed out, aborted
 * by `signal`, or the answer broke off.
 */
function exchange(
  pool: Pool,
  options: Dispatcher.DispatchOptions,
  signal: AbortSignal | undefined,
): Promise<{ status: number; answer: string }> {
  return new Promise((resolve, reject) => {
    let controller: Dispatcher.DispatchController | undefined;
    let status = 0;
    let answered = false;
    const chunks: Buffer[] = [];
    const abort = () => controller?.abort(new undiciErrors.RequestAbortedError());
    const fail = (error: Error) => {
      signal?.removeEventListener('abort', abort);
      if (isRequestDefect(error))
        reject(new GatewayRequestError(undefined, `payment request not sent: ${error.message}`, { cause: error }));
      else if (answered)
        reject(new TransientGatewayError(`payment gateway answer lost: ${error.message}`, { cause: error }));
      else reject(new TransientGatewayError(`payment gateway unreachable: ${error.message}`, { cause: error }));
    };
    if (signal?.aborted) return fail(new undiciErrors.RequestAbortedError());
    signal?.addEventListener('abort', abort, { once: true });
    pool.dispatch(options, {
      onRequestStart(started) {
        controller = started;
        if (signal?.aborted) abort();
      },
      onResponseStart(_controller, statusCode) {
        status = statusCode;
        answered = true;
      },
      onResponseData(_controller, chunk) {
        chunks.push(chunk);
      },
      onResponseEnd() {
        signal?.removeEventListener('abort', abort);
        resolve({ status, answer: (chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)).toString('utf8') });
      },
      onResponseError(_controller, error) {
        fail(error);
      },
    });
  });
}

function answerId(body: Record<string, unknown> | undefined, what: string, status: number): string {
  const id = body?.id;
  if (typeof id !== 'string' || id === '')
    throw new GatewayAnswerError(
      `payment gateway answered the ${what} with HTTP ${status} but no "id": the ${what} may exist`,
    );
  return id;
}

function errorOf(body: Record<string, unknown> | undefined): string {
  const detail = body?.error ?? body?.code;
  return typeof detail === 'string' ? `: ${detail.slice(0, 200)}` : '';
}

/** A URL as spans may show it: without user and password. */
function withoutCredentials(url: string): string {
  try {
    const parsed = new URL(url);
    parsed.username = '';
    parsed.password = '';
    return parsed.toString().replace(/\/+$/, '');
  } catch {
    return url.replace(/\/\/[^@/]*@/, '//');
  }
}
