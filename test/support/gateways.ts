// Fault-injecting variants of the simulated gateway, for tests that need a
// payment gateway to misbehave at an exact moment rather than at random. They
// keep the simulated gateway's ledger and idempotency semantics; only the
// timing or the delivery of an answer changes.
import { TransientGatewayError, type ChargeRequest, type ChargeResult, type RefundRequest } from '../../src/payments/gateway.ts';
import { SimulatedGateway, type SimulatedGatewayOptions } from '../../src/payments/simulated-gateway.ts';

/**
 * Holds every charge call until release() is called, so a test can act while
 * a charge is provably in flight. started resolves when the first call arrives.
 */
export class GatedGateway extends SimulatedGateway {
  readonly started: Promise<void>;
  #markStarted!: () => void;
  #open!: () => void;
  readonly #gate: Promise<void>;

  constructor(options: SimulatedGatewayOptions = {}) {
    super(options);
    this.started = new Promise((resolve) => (this.#markStarted = resolve));
    this.#gate = new Promise((resolve) => (this.#open = resolve));
  }

  /** Charge calls waiting at the gate or past it. */
  arrived = 0;

  override async charge(request: ChargeRequest): Promise<ChargeResult> {
    this.arrived++;
    this.#markStarted();
    await this.#gate;
    return super.charge(request);
  }

  release(): void {
    this.#open();
  }
}

/**
 * The gateway performs the charge, but its answer never reaches the caller
 * (a timeout after the gateway committed) while loseAnswer(request) says so.
 * Other calls, replays of the same key included, get the true first answer.
 */
export class LostReplyGateway extends SimulatedGateway {
  loseAnswer: (request: ChargeRequest) => boolean | Promise<boolean> = () => false;

  override async charge(request: ChargeRequest): Promise<ChargeResult> {
    const result = await super.charge(request);
    if (await this.loseAnswer(request)) throw new TransientGatewayError('simulated gateway: the answer was lost on the way back');
    return result;
  }
}

/** Fails every call with a transient error while `down` is true: an outage the test switches off. */
export class OutageGateway extends SimulatedGateway {
  down = true;

  override async charge(request: ChargeRequest): Promise<ChargeResult> {
    if (this.down) throw new TransientGatewayError('simulated gateway: 503 Service Unavailable (outage)');
    return super.charge(request);
  }

  override async refund(request: RefundRequest): Promise<{ refundId: string }> {
    if (this.down) throw new TransientGatewayError('simulated gateway: 503 Service Unavailable (outage)');
    return super.refund(request);
  }
}
