// How a request body becomes a value: the one place that decides which bytes
// this API takes as JSON. RFC 8259 (section 8.1) says JSON exchanged between
// systems MUST be UTF-8, and an I-JSON receiver (RFC 7493, section 2.3) MUST
// reject an object that names a member twice. Every route that takes a body
// reads it through parseJsonBody, so each refusal below holds everywhere:
//
// - a Content-Encoding other than identity: the bytes are not the JSON text
//   (gzip, say), and this server decodes no content coding (415, RFC 9110
//   section 15.5.16);
// - a charset other than UTF-8: decoding latin1 bytes as UTF-8 would store
//   other characters than the client sent (415);
// - bytes that are not UTF-8: a lenient decoder would silently store U+FFFD
//   in their place (400);
// - a member named twice in one object: which one wins depends on the
//   parser, so two systems reading the same body could act on two different
//   requests (400).
import { AppError } from '../errors.ts';

/** The content codings a request body may have: none. */
export const ACCEPTED_CONTENT_ENCODING = 'identity';

/** The charset labels of UTF-8 a client may name (the Encoding Standard's labels "utf-8" and "utf8"). */
const UTF8_CHARSETS = new Set(['utf-8', 'utf8']);

// fatal: a malformed sequence is an error, not U+FFFD. ignoreBOM: a leading
// BOM stays in the text, where JSON.parse refuses it (RFC 8259 section 8.1:
// implementations MUST NOT add one).
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * The value of a JSON request body, or undefined for an empty (all
 * whitespace) body, which is how clients say "no options".
 *
 * @param body the raw bytes, at most the server's body limit
 * @param headers the request's Content-Type and Content-Encoding, as Node gives them (lower-case names)
 * @throws AppError unsupported_content_encoding (415) for a Content-Encoding other than identity;
 *   unsupported_media_type (415) for a charset parameter other than utf-8 (or utf8);
 *   malformed_json (400) for bytes that are not UTF-8 or text that is not JSON;
 *   duplicate_json_member (400) for an object that names a member twice
 */
export function parseJsonBody(
  body: Buffer,
  headers: { 'content-type'?: string; 'content-encoding'?: string },
): unknown {
  const encoding = headers['content-encoding'];
  if (encoding !== undefined && !isIdentity(encoding)) {
    throw new AppError(
      'unsupported_content_encoding',
      `the request body has Content-Encoding "${encoding}"; this server reads only unencoded (identity) bodies`,
    );
  }
  const charset = charsetOf(headers['content-type'] ?? '');
  if (charset !== undefined && !UTF8_CHARSETS.has(charset)) {
    throw new AppError('unsupported_media_type', `the request body must be UTF-8 JSON, not charset=${charset}`);
  }
  let text: string;
  try {
    text = UTF8.decode(body);
  } catch {
    throw new AppError('malformed_json', 'the request body is not valid UTF-8 (RFC 8259, section 8.1)');
  }
  if (text.trim() === '') return undefined;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new AppError('malformed_json', `the request body is not valid JSON: ${(error as Error).message}`);
  }
  const duplicate = duplicateMember(text);
  if (duplicate !== undefined) {
    throw new AppError(
      'duplicate_json_member',
      `the member ${JSON.stringify(duplicate.name)} appears twice in the object at ${duplicate.at || '/'} (RFC 7493, section 2.3)`,
    );
  }
  return value;
}

/** "identity", or a list of nothing but identity ("identity, identity"), in any case. */
function isIdentity(encoding: string): boolean {
  return encoding.split(',').every((coding) => coding.trim().toLowerCase() === ACCEPTED_CONTENT_ENCODING);
}

/** The charset parameter of a media type, lower-cased and unquoted; undefined when there is none. */
export function charsetOf(contentType: string): string | undefined {
  for (const parameter of contentType.split(';').slice(1)) {
    const equals = parameter.indexOf('=');
    if (equals < 0 || parameter.slice(0, equals).trim().toLowerCase() !== 'charset') continue;
    const value = parameter.slice(equals + 1).trim();
    return (
      value.startsWith('"') && value.endsWith('"') && value.length >= 2 ? value.slice(1, -1) : value
    ).toLowerCase();
  }
  return undefined;
}

/**
 * The first member named twice in one object of a text JSON.parse has
 * accepted, with the JSON pointer of that object; undefined when every name
 * is unique. One pass over the text: strings are skipped with indexOf, and a
 * name is unescaped (JSON.parse of its literal) only when it holds a
 * backslash, so that "a" and "\u0061" are the same name.
 */
export function duplicateMember(text: string): { name: string; at: string } | undefined {
  // The text is valid JSON, so a quote after '{' or ',' inside an object opens a name.
  // Each open container: the names of an object seen so far (null for an
  // array), and the pointer to it.
  const stack: { names: Set<string> | null; at: string; key: string | number }[] = [];
  let expectName = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let end = text.indexOf('"', i + 1);
      while (isEscaped(text, end)) end = text.indexOf('"', end + 1);
      const top = stack.at(-1);
      if (expectName && top?.names) {
        const literal = text.slice(i + 1, end);
        const name = literal.includes('\\') ? (JSON.parse(`"${literal}"`) as string) : literal;
        if (top.names.has(name)) return { name, at: top.at };
        top.names.add(name);
        top.key = name;
        expectName = false;
      }
      i = end;
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      const parent = stack.at(-1);
      const at = parent === undefined ? '' : `${parent.at}/${pointerToken(parent.key)}`;
      stack.push({ names: c === 0x7b ? new Set() : null, at, key: 0 });
      expectName = c === 0x7b;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
    } else if (c === 0x2c /* , */) {
      const top = stack.at(-1);
      if (top?.names) expectName = true;
      else if (top) top.key = (top.key as number) + 1;
    }
  }
  return undefined;
}

/** True when the quote at `index` is escaped: an odd number of backslashes before it. */
function isEscaped(text: string, index: number): boolean {
  let backslashes = 0;
  for (let j = index - 1; text.charCodeAt(j) === 0x5c; j--) backslashes++;
  return backslashes % 2 === 1;
}

/** A JSON pointer reference token (RFC 6901): "~" and "/" escaped. */
function pointerToken(key: string | number): string {
  return String(key).replaceAll('~', '~0').replaceAll('/', '~1');
}
