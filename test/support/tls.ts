// Throwaway TLS material for tests that put a load balancer's TLS in front of
// Orderflow: a CA of their own and a server certificate it signs, made with
// the openssl command line, so clients verify certificates as in production
// instead of turning verification off.
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface TestCertificates {
  /** The CA certificate (PEM) clients trust. */
  ca: string;
  /** The server certificate, signed by the CA, for localhost and 127.0.0.1. */
  certFile: string;
  keyFile: string;
  /** Certificate and key in one PEM file, as HAProxy's `crt` takes them. */
  pemFile: string;
}

/** Makes a CA and a server certificate (ECDSA P-256, valid one day) in dir. */
export async function makeTestCertificates(dir: string): Promise<TestCertificates> {
  const file = (name: string) => path.join(dir, name);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  await run('openssl', [
    'req',
    '-x509',
    ...ec,
    '-keyout',
    file('ca.key'),
    '-out',
    file('ca.crt'),
    '-days',
    '1',
    '-subj',
    '/CN=Orderflow test CA',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  await run('openssl', [
    'req',
    ...ec,
    '-keyout',
    file('server.key'),
    '-out',
    file('server.csr'),
    '-subj',
    '/CN=localhost',
  ]);
  await writeFile(
    file('server.ext'),
    'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n',
  );
  await run('openssl', [
    'x509',
    '-req',
    '-in',
    file('server.csr'),
    '-CA',
    file('ca.crt'),
    '-CAkey',
    file('ca.key'),
    '-CAcreateserial',
    '-out',
    file('server.crt'),
    '-days',
    '1',
    '-extfile',
    file('server.ext'),
  ]);
  const [certificate, key] = await Promise.all([
    readFile(file('server.crt'), 'utf8'),
    readFile(file('server.key'), 'utf8'),
  ]);
  await writeFile(file('server.pem'), certificate + key, { mode: 0o600 });
  return {
    ca: await readFile(file('ca.crt'), 'utf8'),
    certFile: file('server.crt'),
    keyFile: file('server.key'),
    pemFile: file('server.pem'),
  };
}
