// Fault-injecting variants of the simulated gateway, for tests that need a
// payment gateway to misbehave at an exact moment rather than at random. They
// keep the simulated gateway's ledger and idempotency semantics; only the
// timing or the delivery of an answer changes.
import {
  GatewayAnswerError,
  GatewayRequestError,
  TransientGatewayError,
  type ChargeRequest,
  type ChargeResult,
  type RefundRequest,
  type VoidRequest,
  type VoidResult,
} from '../../src/payments/gateway.ts';
import { SimulatedGateway, type SimulatedGatewayOptions } from '../../src/payments/simulated-gateway.ts';

/** The simulated gateway keeping its whole ledger: the tests check every order against it. */
class LedgerGateway extends SimulatedGateway {
  constructor(options: SimulatedGatewayOptions = {}) {
    super({ retain: 'all', ...options });
  }
}

/**
 * Holds every charge call until release() is called, so a test can act while
 * a charge is provably in flight. started resolves when the first call arrives.
 */
export class GatedGateway extends LedgerGateway {
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
 * Books the first charge at once, then holds its answer until release(): a
 * charge that exists at the gateway while the pay worker still waits to hear
 * of it. booked resolves when it is made.
 */
export class HeldAnswerGateway extends LedgerGateway {
  readonly booked: Promise<void>;
  #markBooked!: () => void;
  #open!: () => void;
  readonly #gate: Promise<void>;

  constructor(options: SimulatedGatewayOptions = {}) {
    super(options);
    this.booked = new Promise((resolve) => (this.#markBooked = resolve));
    this.#gate = new Promise((resolve) => (this.#open = resolve));
  }

  override async charge(request: ChargeRequest): Promise<ChargeResult> {
    const result = await super.charge(request);
    this.#markBooked();
    await this.#gate;
    return result;
  }

  release(): void {
    this.#open();
  }
}

/**
 * Every charge fails with a 503 and books nothing while chargesDown is true
 * (tok_flaky at its worst); voids and refunds are served.
 */
export class FailingChargesGateway extends LedgerGateway {
  chargesDown = true;

  override async charge(request: ChargeRequest): Promise<ChargeResult> {
    if (this.chargesDown) {
      this.chargeCalls++;
      throw new TransientGatewayError('simulated gateway: 503 Service Unavailable (tok_flaky)');
    }
    return super.charge(request);
  }
}

/**
 * The gateway performs the charge, but its answer never reaches the caller
 * (a timeout after the gateway committed) while loseAnswer(request) says so.
 * Other calls, replays of the same key included, get the true first answer.
 */
export class LostReplyGateway extends LedgerGateway {
  loseAnswer: (request: ChargeRequest) => boolean | Promise<boolean> = () => false;

  override async charge(request: ChargeRequest): Promise<ChargeResult> {
    const result = await super.charge(request);
    if (await this.loseAnswer(request))
      throw new TransientGatewayError('simulated gateway: the answer was lost on the way back');
    return result;
  }
}

/** Fails every call with a transient error while `down` is true: an outage the test switches off. */
export class OutageGateway extends LedgerGateway {
  down = true;

  override async charge(request: ChargeRequest): Promise<ChargeResult> {
    if (this.down) throw new TransientGatewayError('simulated gateway: 503 Service Unavailable (outage)');
    return super.charge(request);
  }

  override async refund(request: RefundRequest): Promise<{ refundId: string }> {
    if (this.down) throw new TransientGatewayError('simulated gateway: 503 Service Unavailable (outage)');
    return super.refund(request);
  }

  override async voidCharge(request: VoidRequest): Promise<VoidResult> {
    if (this.down) throw new TransientGatewayError('simulated gateway: 503 Service Unavailable (outage)');
    return super.voidCharge(request);
  }
}

/**
 * A gateway with only what the contract promises, charges and refunds: it
 * has no void (answers it as a 404 would), so an unknown charge outcome can
 * only be learned by replaying the charge.
 */
export class NoVoidGateway extends OutageGateway {
  override async voidCharge(): Promise<VoidResult> {
    this.voidCalls++;
    return { status: 'unsupported' };
  }
}

/**
 * Payments that can never succeed, told apart by their card token:
 * - tok_refused: the gateway refuses the request itself (400, as for a token
 *   it does not know); nothing is booked;
 * - tok_local_fault: the call fails in our own code before anything is sent
 *   (a TypeError, as a programming error would);
 * - tok_unreadable: the gateway books the charge but its answer cannot be
 *   read, on every replay of the key, nor its void's.
 * Every other token behaves as with the simulated gateway. calls counts the
 * charge calls per order reference, replays included.
 */
export class PoisonGateway extends LedgerGateway {
  readonly calls = new Map<string, number>();
  /** Set once the cause is fixed: every token then behaves as with the simulated gateway. */
  cured = false;

  override async charge(request: ChargeRequest): Promise<ChargeResult> {
    this.calls.set(request.reference, (this.calls.get(request.reference) ?? 0) + 1);
    if (this.cured) return super.charge(request);
    if (request.token === 'tok_refused')
      throw new GatewayRequestError(400, 'simulated gateway: no such token: tok_refused');
    if (request.token === 'tok_local_fault')
      throw new TypeError("Cannot read properties of undefined (reading 'amount')");
    const result = await super.charge(request);
    if (request.token === 'tok_unreadable') {
      this.#unreadable.add(request.reference);
      throw new GatewayAnswerError('simulated gateway answered 201 without an id');
    }
    return result;
  }

  override async voidCharge(request: VoidRequest): Promise<VoidResult> {
    const result = await super.voidCharge(request);
    if (!this.cured && this.#unreadable.has(request.reference))
      throw new GatewayAnswerError('simulated gateway answered the void with 200 but no status');
    return result;
  }

  readonly #unreadable = new Set<string>();
}
