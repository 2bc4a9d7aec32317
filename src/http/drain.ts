// Graceful shutdown of the HTTP server with no request met by a reset.
//
// Node's own server.close() destroys every connection that is idle at that
// instant: a keep-alive connection between two requests, and a connection
// accepted a moment before whose request has not been read yet. A request on
// its way on one of them meets a connection torn down with no answer
// (ECONNRESET), not the shutdown 503 a load balancer retries elsewhere. And a
// keep-alive connection whose request was in flight stays open after its
// answer, holding the shutdown up until the client leaves.
//
// Here shutting down takes two steps. close() (Fastify calls it after its
// preClose hooks) stops listening and calls back once every request in
// progress has been answered; the connections stay open, and whatever request
// arrives on them is refused (the hook in server.ts) with Connection: close.
// Every answer sent from then on closes its connection, unless a pipelined
// request is waiting behind it. closeConnections(), last of all, closes what
// is still open and idle.
import { Server as HttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { Server as NetServer, type Socket } from 'node:net';

export class Drain {
  readonly #server: HttpServer;
  #closing = false;
  /** The net server has emitted 'close': not listening, and no connection left. */
  #closed = false;
  /** Requests received and not yet answered (or cut off), in all and per connection. */
  #inProgress = 0;
  readonly #perConnection = new WeakMap<Socket, number>();
  #onAnswered: (() => void)[] = [];

  /** Takes over server.close(); see the module comment. */
  constructor(server: HttpServer) {
    this.#server = server;
    server.on('close', () => (this.#closed = true));
    server.close = (callback?: (error?: Error) => void) => {
      this.#closing = true;
      // net.Server's close stops listening and leaves the connections alone.
      NetServer.prototype.close.call(server);
      void this.#answered().then(() => callback?.());
      return server;
    };
  }

  /** True once the shutdown has begun: requests are refused from then on. */
  get closing(): boolean {
    return this.#closing;
  }

  /** Starts refusing requests (preClose, before the listener closes). */
  begin(): void {
    this.#closing = true;
  }

  /** Counts a request until its answer is sent or its connection closes. Call it as each request arrives. */
  track(request: IncomingMessage, response: ServerResponse): void {
    const socket = request.socket;
    const open = this.#perConnection.get(socket);
    if (open === undefined) {
      // A connection that closes takes its unanswered requests with it (a
      // pipelined request's answer may never get a 'close' of its own).
      socket.once('close', () => this.#settle(socket, this.#perConnection.get(socket) ?? 0));
    }
    this.#perConnection.set(socket, (open ?? 0) + 1);
    this.#inProgress++;
    response.once('close', () => this.#settle(socket, 1));
  }

  /**
   * Whether an answer about to be sent on this connection should close it:
   * during shutdown, when no other request is waiting behind it (the last
   * one's answer closes it instead).
   */
  shouldClose(request: IncomingMessage): boolean {
    return this.#closing && (this.#perConnection.get(request.socket) ?? 0) <= 1;
  }

  /**
   * The last step of shutdown: closes the connections still open and idle
   * (until now any request on them was answered 503) and resolves once no
   * connection is left. A connection still answering closes after its answer.
   */
  async closeConnections(): Promise<void> {
    this.#closing = true;
    if (this.#closed) return;
    const closed = new Promise<void>((resolve) => this.#server.once('close', () => resolve()));
    // Node's own close, now that nothing is held for a request still on its
    // way: it destroys the idle connections and stops its timeout checks.
    HttpServer.prototype.close.call(this.#server);
    await closed;
  }

  #settle(socket: Socket, count: number): void {
    const open = this.#perConnection.get(socket) ?? 0;
    const settled = Math.min(count, open);
    if (settled === 0) return;
    this.#perConnection.set(socket, open - settled);
    this.#inProgress -= settled;
    if (this.#inProgress === 0) for (const resolve of this.#onAnswered.splice(0)) resolve();
  }

  #answered(): Promise<void> {
    if (this.#inProgress === 0) return Promise.resolve();
    return new Promise((resolve) => this.#onAnswered.push(resolve));
  }
}

/**
 * Resolves once the request's body has been received (and dropped), so that
 * an answer sent before it, followed by closing the connection, does not
 * make the client's TCP stack reset the connection and lose the answer while
 * it is still sending. A body larger than limitBytes is not waited for.
 */
export function bodyReceived(request: IncomingMessage, limitBytes: number): Promise<void> {
  if (request.complete || Number(request.headers['content-length'] ?? 0) > limitBytes) return Promise.resolve();
  return new Promise((resolve) => {
    let received = 0;
    const done = () => {
      request.off('data', count);
      request.off('end', done);
      request.off('close', done);
      request.off('error', done);
      resolve();
    };
    const count = (chunk: Buffer) => {
      received += chunk.length;
      if (received > limitBytes) done();
    };
    request.on('data', count);
    request.once('end', done);
    request.once('close', done);
    request.once('error', done);
  });
}
