// Programs a test needs beside the servers (podman, haproxy, kubectl, …):
// found on the PATH, and the test skipped without them, or failed under
// REQUIRE_SERVICES=1 so that a missing program cannot pass silently.
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:net';

/** True when `binary args` runs. */
export function installed(binary: string, args: readonly string[]): boolean {
  try {
    execFileSync(binary, args, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * The skip reason for a test that needs these programs (each with the
 * arguments that make it print its version), or undefined when all are
 * there. With REQUIRE_SERVICES=1 a missing program throws instead.
 */
export function skipUnlessInstalled(what: string, programs: Record<string, readonly string[]>): string | undefined {
  const missing = Object.entries(programs)
    .filter(([binary, args]) => !installed(binary, args))
    .map(([binary]) => binary);
  if (missing.length === 0) return undefined;
  if (process.env.REQUIRE_SERVICES === '1')
    throw new Error(
      `${what} needs ${missing.join(', ')} (REQUIRE_SERVICES=1): install ${missing.length === 1 ? 'it' : 'them'}`,
    );
  return `${missing.join(', ')} not installed`;
}

/** A TCP port on 127.0.0.1 that nothing listens on right now. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}
