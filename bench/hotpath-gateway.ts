// The simulated gateway over HTTP in a process of its own, for the hotpath
// scenario: the server's CPU must not be counted with the client's, which
// process.cpuUsage() in the bench process would do if both ran there. It
// answers at once (no simulated latency) and counts the TCP connections it
// accepts, so the bench can say how many each round of charges opened.
import { subscribe } from 'node:diagnostics_channel';
import { startGatewayServer } from '../src/payments/gateway-server.ts';
import { SimulatedGateway } from '../src/payments/simulated-gateway.ts';

/** From the parent: how many connections so far, or stop. */
export type HotpathGatewayRequest = { kind: 'connections' } | { kind: 'close' };
/** To the parent: the server's URL once it listens, then the count of accepted TCP connections on each ask. */
export type HotpathGatewayMessage = { kind: 'listening'; url: string } | { kind: 'connections'; accepted: number };

let accepted = 0;
// Every server socket of this process is the gateway's: it is the only server here.
subscribe('net.server.socket', () => accepted++);

const server = await startGatewayServer({ gateway: new SimulatedGateway({ latencyMs: 0 }) });
const send = (message: HotpathGatewayMessage) => process.send?.(message);
process.on('message', (request: HotpathGatewayRequest) => {
  if (request.kind === 'connections') send({ kind: 'connections', accepted });
  else void server.close().then(() => process.disconnect());
});
send({ kind: 'listening', url: server.url });
