// Reads the figures stream (Server-Sent Events) the way the console does:
// with eventsource-parser's stream, so the tests and the browser parse the
// same frames alike.
import { EventSourceParserStream } from 'eventsource-parser/stream';

/**
 * The `figures` readings of a /v1/admin/figures/stream response, parsed, as
 * they arrive (other events, such as `unavailable`, are passed over). The
 * stream never ends by itself: if it does, this throws.
 */
export async function* figuresReadings<T>(response: Response): AsyncGenerator<T> {
  const events = response.body!.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream());
  for await (const message of events) if (message.event === 'figures') yield JSON.parse(message.data) as T;
  throw new Error('the figures stream ended; it stays open until the client leaves');
}
