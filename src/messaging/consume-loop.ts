// The consume loop both broker adapters share: subscribe, hand each delivery
// to the handler with at most `concurrency` in flight, and when the
// subscription breaks (the connection or channel is lost, the broker
// cancels the consumer) subscribe again after a backoff, for as long as the
// subscription is not stopped. An adapter supplies only "subscribe once".
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { backoffMs } from '../backoff.ts';
import { BROKER } from '../tunables.ts';
import type { Delivery, DeliveryHandler, Subscription } from './broker.ts';

/** What a subscription attempt gets from the loop. */
export interface ConsumeSession {
  /** True once stop() was called: take no new messages, hand back what was not started. */
  stopping(): boolean;
  /** Free handler slots (concurrency minus deliveries in flight). */
  free(): number;
  /** Resolves when a delivery in flight finishes. */
  slotFreed(): Promise<unknown>;
  /** Resolves when every delivery in flight has finished. */
  settled(): Promise<unknown>;
  /** Hands a delivery to the handler (counted in flight until it finishes). */
  deliver(delivery: Delivery): void;
}

/** One subscription, live until it ends. */
export interface ConsumeAttempt {
  /** Resolves when the subscription ended because it was stopped; rejects when it broke. */
  done: Promise<void>;
  /** Stops taking messages and ends the subscription (the loop then waits for done and for the deliveries in flight). */
  stop(): Promise<void>;
}

/** Subscribes once: resolves when messages flow (rejects if it cannot subscribe now). */
export type SubscribeOnce = (session: ConsumeSession) => Promise<ConsumeAttempt>;

/**
 * Consumes a queue through subscribeOnce, resubscribing with backoff
 * (BROKER.resubscribe) until stopped. The subscription is in `live` until
 * it has stopped (the adapter's close() stops what is left there).
 */
export function consumeLoop(
  adapter: { name: 'NATS' | 'RabbitMQ'; log: Logger; live: Set<Subscription> },
  queue: string,
  handler: DeliveryHandler,
  options: { concurrency: number },
  subscribeOnce: SubscribeOnce,
): Subscription {
  const { name: broker, log } = adapter;
  const concurrency = Math.max(1, options.concurrency);
  // Deliveries in flight are counted, not kept: a slot freed wakes whoever
  // waits for one. (A set of their promises raced on every free slot attached
  // a reaction to each delivery in flight, and three promises were chained
  // per delivery to keep the set.)
  let inFlight = 0;
  let waiting: (() => void)[] = [];
  const finished = () => {
    inFlight--;
    const wake = waiting;
    waiting = [];
    for (const resolve of wake) resolve();
  };
  const nextFinish = () => new Promise<void>((resolve) => waiting.push(resolve));
  let stopping = false;
  let attempt: ConsumeAttempt | undefined;
  const wakeup = new AbortController();
  const run = async (delivery: Delivery) => {
    try {
      await handler(delivery);
    } catch (error) {
      log.error(
        { err: error, queue, messageId: delivery.id },
        `${broker} delivery failed unacknowledged; the broker delivers it again`,
      );
    } finally {
      finished();
    }
  };
  const session: ConsumeSession = {
    stopping: () => stopping,
    free: () => concurrency - inFlight,
    slotFreed: () => (inFlight === 0 ? Promise.resolve() : nextFinish()),
    settled: async () => {
      while (inFlight > 0) await nextFinish();
    },
    deliver: (delivery) => {
      inFlight++;
      void run(delivery);
    },
  };

  const running = (async () => {
    for (let failures = 0; !stopping;) {
      try {
        attempt = await subscribeOnce(session);
        failures = 0;
        // Stopped while subscribing: this attempt ends at once.
        if (stopping) await attempt.stop();
        await attempt.done;
      } catch (error) {
        if (stopping) break;
        failures++;
        const retryInMs = Math.round(backoffMs(failures, BROKER.resubscribe));
        log.error({ err: error, queue, retryInMs }, `${broker} consumer failed; resubscribing`);
        await sleep(retryInMs, undefined, { signal: wakeup.signal }).catch(() => undefined);
      }
    }
  })();

  const subscription: Subscription = {
    stop: async () => {
      stopping = true;
      wakeup.abort();
      await attempt?.stop();
      await running;
      await session.settled();
      adapter.live.delete(subscription);
    },
  };
  adapter.live.add(subscription);
  return subscription;
}
