// The payment gateway over HTTP, as the contract describes it. Maps answers
// to outcomes: 201 success, 402 decline (final), 5xx and network failures
// transient (retry with the same key), any other status a request error.
import { Agent, request } from 'undici';
import { GatewayRequestError, TransientGatewayError, type ChargeRequest, type ChargeResult, type PaymentGateway, type RefundRequest } from './gateway.ts';

export class HttpGateway implements PaymentGateway {
  readonly #baseUrl: string;
  readonly #agent: Agent;

  constructor(baseUrl: string, options: { timeoutMs?: number; connections?: number } = {}) {
    this.#baseUrl = baseUrl.replace(/\/+$/, '');
    const timeout = options.timeoutMs ?? 5_000;
    this.#agent = new Agent({ connections: options.connections ?? 64, headersTimeout: timeout, bodyTimeout: timeout, connectTimeout: timeout });
  }

  async charge(req: ChargeRequest, signal?: AbortSignal): Promise<ChargeResult> {
    const { status, body } = await this.#post(
      '/v1/charges',
      req.idempotencyKey,
      { amountCents: req.amountCents, currency: req.currency, token: req.token, reference: req.reference },
      signal,
    );
    if (status === 201) return { status: 'succeeded', chargeId: stringField(body, 'id') };
    if (status === 402) return { status: 'declined', code: typeof body?.code === 'string' ? body.code : 'card_declined' };
    throw new GatewayRequestError(status, `payment gateway refused the charge with HTTP ${status}`);
  }

  async refund(req: RefundRequest, signal?: AbortSignal): Promise<{ refundId: string }> {
    const { status, body } = await this.#post('/v1/refunds', req.idempotencyKey, { chargeId: req.chargeId, amountCents: req.amountCents }, signal);
    if (status === 201) return { refundId: stringField(body, 'id') };
    throw new GatewayRequestError(status, `payment gateway refused the refund with HTTP ${status}`);
  }

  close(): Promise<void> {
    return this.#agent.close();
  }

  async #post(path: string, idempotencyKey: string, payload: object, signal?: AbortSignal) {
    let response;
    try {
      response = await request(this.#baseUrl + path, {
        method: 'POST',
        dispatcher: this.#agent,
        headers: { 'content-type': 'application/json', 'idempotency-key': idempotencyKey },
        body: JSON.stringify(payload),
        signal,
      });
    } catch (error) {
      throw new TransientGatewayError(`payment gateway unreachable: ${(error as Error).message}`, { cause: error });
    }
    if (response.statusCode >= 500) {
      await response.body.dump();
      throw new TransientGatewayError(`payment gateway answered HTTP ${response.statusCode}`);
    }
    const text = await response.body.text();
    let body: Record<string, unknown> | undefined;
    try {
      body = text ? (JSON.parse(text) as Record<string, unknown>) : undefined;
    } catch {
      body = undefined;
    }
    return { status: response.statusCode, body };
  }
}

function stringField(body: Record<string, unknown> | undefined, field: string): string {
  const value = body?.[field];
  if (typeof value !== 'string') throw new TransientGatewayError(`payment gateway answer lacks "${field}"`);
  return value;
}
