// The Host header rules of HTTP/1.1, checked for every request before routing.
/** uri-host [ ":" port ] (RFC 9110, section 7.2; uri-host from RFC 3986, section 3.2.2). */
const HOST_VALUE = /^(?:\[[0-9A-Za-z\-._~!$&'()*+,;=:]+\]|[0-9A-Za-z\-._~%!$&'()*+,;=]*)(?::[0-9]*)?$/;

/**
 * Why a request's Host header fields are refused, or undefined when they are
 * fine. RFC 9112, section 3.2: a server MUST answer 400 to an HTTP/1.1
 * request without Host, and to any request with more than one Host field
 * line or an invalid Host value. Node keeps the first of several Host lines,
 * so the raw header lines are counted: a request that names two hosts could
 * otherwise be routed by one and answered as the other.
 *
 * @param rawHeaders Node's `IncomingMessage.rawHeaders`: names and values alternating, as received.
 * @param httpVersion "1.0", "1.1", …
 */
export function hostProblem(rawHeaders: readonly string[], httpVersion: string): string | undefined {
  let value: string | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    if (name.length !== 4 || name.toLowerCase() !== 'host') continue;
    if (value !== undefined) return 'a request must carry one Host header, not several (RFC 9112, section 3.2)';
    value = rawHeaders[i + 1]!;
  }
  if (value === undefined)
    return httpVersion === '1.1' ? 'an HTTP/1.1 request must carry a Host header (RFC 9112, section 3.2)' : undefined;
  if (!HOST_VALUE.test(value)) return 'the Host header is not a host with an optional port (RFC 9110, section 7.2)';
  return undefined;
}
