// Header field lines checked for every request before routing: the ones this
// API reads must come once, and Host must name a host. Node's own handling
// cannot be relied on for either: of several lines it keeps the first for
// some fields (Host, Authorization, Content-Type) and joins the others with
// ", " (Idempotency-Key), so a request naming two values would be served as
// one of them, or as a key nobody sent.
import { isIPv6 } from 'node:net';

/**
 * Fields that are not lists (RFC 9110, section 5.3: a sender MUST NOT send
 * several lines of such a field), and which this API reads.
 */
const ONE_LINE_ONLY = new Set([
  'host',
  'authorization',
  'idempotency-key',
  'content-type',
  'origin',
  'x-orderflow-console',
]);

const ONE_LINE_LENGTHS = new Set([...ONE_LINE_ONLY].map((name) => name.length));

const TRANSFER_ENCODING = 'transfer-encoding';

/** reg-name of RFC 3986, section 3.2.2: unreserved, sub-delims and %HH, possibly empty. */
const REG_NAME = /^(?:[0-9A-Za-z\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*$/;
/** IPvFuture of RFC 3986, section 3.2.2. */
const IP_FUTURE = /^v[0-9A-Fa-f]+\.[0-9A-Za-z\-._~!$&'()*+,;=:]+$/;

/** uri-host [ ":" port ] (RFC 9110, section 7.2; uri-host from RFC 3986, section 3.2.2). */
export function isHostValue(value: string): boolean {
  let host = value;
  const portAt = value.lastIndexOf(':');
  if (portAt !== -1 && portAt > value.lastIndexOf(']')) {
    if (!/^[0-9]*$/.test(value.slice(portAt + 1))) return false;
    host = value.slice(0, portAt);
  }
  if (host.startsWith('[')) {
    if (!host.endsWith(']')) return false;
    const literal = host.slice(1, -1);
    return isIPv6(literal) || IP_FUTURE.test(literal);
  }
  return REG_NAME.test(host);
}

/** The HTTP versions this server speaks (RFC 9112, section 2.3); Node's parser also passes 0.9 and 2.0 on. */
const SERVED_VERSIONS = new Set(['1.0', '1.1']);

/**
 * Why a request's version or header field lines are refused (a 400's
 * detail), or undefined when they are fine:
 * - a version other than HTTP/1.0 or HTTP/1.1: Node's parser passes "0.9"
 *   and "2.0" request lines on (and refuses 1.2, 3.0, … itself). Not 505:
 *   the contract promises that no input yields a 5xx, and such a request
 *   line is not valid HTTP/1.x. Checked first, so no rule below meets such a
 *   version; the rules are written for any version all the same: Host is
 *   required from 1.1 on, Transfer-Encoding is taken in 1.1 only;
 * - more than one line of a field in ONE_LINE_ONLY (RFC 9110, section 5.3;
 *   for Host, RFC 9112, section 3.2 says a server MUST answer 400);
 * - no Host in an HTTP/1.1 request, or a Host that is not a host with an
 *   optional port (RFC 9112, section 3.2); HTTP/1.0 has no Host requirement
 *   (RFC 1945), so such a request without one is served;
 * - Transfer-Encoding in an HTTP/1.0 request, whose framing RFC 9112
 *   (section 6.1) says to treat as faulty: HTTP/1.0 has no chunked coding,
 *   and Node's parser would read the body as chunked anyway, as an HTTP/1.0
 *   intermediary in front might not;
 * - a Transfer-Encoding other than exactly "chunked": Node's parser reads
 *   "gzip, chunked" as chunked and hands on the gzipped bytes as if plain
 *   (it refuses itself a list whose last coding is not chunked). RFC 9112
 *   (sections 6.1, 7) suggests 501 for a coding not understood; 400 here, as
 *   above, since no input may yield a 5xx.
 * The details name the version only where the rule is the version's.
 *
 * @param rawHeaders Node's `IncomingMessage.rawHeaders`: names and values alternating, as received.
 * @param httpVersion Node's `IncomingMessage.httpVersion`: "1.0", "1.1", "2.0", …
 */
export function fieldLinesProblem(rawHeaders: readonly string[], httpVersion: string): string | undefined {
  if (!SERVED_VERSIONS.has(httpVersion))
    return `HTTP/${httpVersion} is not served here: send the request as HTTP/1.1 (or HTTP/1.0)`;
  let host: string | undefined;
  /** The Transfer-Encoding lines' values, in order (several lines make one list, RFC 9110, section 5.3). */
  let codings: string[] | undefined;
  // Every request passes here: names of other lengths are not lowercased,
  // and the few fields seen go in an array, not a new Set per request.
  const seen: string[] = [];
  const chunkedAllowed = httpVersion === '1.1';
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const length = rawHeaders[i]!.length;
    if (!ONE_LINE_LENGTHS.has(length)) {
      if (length === TRANSFER_ENCODING.length && rawHeaders[i]!.toLowerCase() === TRANSFER_ENCODING) {
        if (!chunkedAllowed)
          return `an HTTP/${httpVersion} request cannot carry Transfer-Encoding: its body framing is faulty (RFC 9112, section 6.1)`;
        (codings ??= []).push(rawHeaders[i + 1]!);
      }
      continue;
    }
    const name = rawHeaders[i]!.toLowerCase();
    if (!ONE_LINE_ONLY.has(name)) continue;
    if (seen.includes(name))
      return name === 'host'
        ? 'a request must carry one Host header, not several (RFC 9112, section 3.2)'
        : `the ${name} header must be sent once, not on several lines (RFC 9110, section 5.3)`;
    seen.push(name);
    if (name === 'host') host = rawHeaders[i + 1]!;
  }
  if (host === undefined) {
    if (httpVersion !== '1.0') return `an HTTP/${httpVersion} request must carry a Host header (RFC 9112, section 3.2)`;
  } else if (!isHostValue(host)) return 'the Host header is not a host with an optional port (RFC 9110, section 7.2)';
  if (codings !== undefined) {
    const list = codings.join(',');
    if (list.trim().toLowerCase() !== 'chunked')
      return `Transfer-Encoding "${list}": the only transfer coding this server takes is chunked, alone (RFC 9112, section 7)`;
  }
  return undefined;
}
