// The Node.js releases Orderflow runs on, checked before anything else loads.
// Plain JavaScript on purpose: a Node.js too old to strip TypeScript's types
// fails on the first .ts file with only "Unknown file extension .ts", so the
// npm scripts load this file first (`node --import ./src/node-version.js`),
// and main.ts imports it first for a Node.js that can run .ts but is older
// still than what the code needs.
//
// What sets the minimum (package.json "engines" says the same; a test holds
// them together):
//   - 22.18.0: type stripping on by default (22.6 had it only behind
//     --experimental-strip-types), to run the .ts sources as they are;
//   - 22.16.0: node:sqlite's DatabaseSync `timeout` option (the data
//     directory's lock, src/storage/data-dir-lock.ts, which also opens a
//     file: URL, 22.15.0); 22.13.0 took node:sqlite out from behind
//     --experimental-sqlite;
//   - 22.19.0: undici 8, the payment gateway's HTTP client, declares it.
// Node.js 23 never had the `timeout` option (it came in 24.0.0 and 22.16.0)
// and is past its end of life: the 22 line from 22.19.0, or 24 and later.
import process from 'node:process';

/** package.json "engines".node, as npm reads it. */
export const NODE_ENGINES = '^22.19.0 || >=24';

/**
 * Why this Node.js cannot run Orderflow (one sentence for the operator), or
 * undefined when it can.
 *
 * @param {string} version process.versions.node, e.g. "22.19.0"
 * @returns {string | undefined}
 */
export function nodeVersionProblem(version) {
  const [major = 0, minor = 0] = version.split('.').map(Number);
  if (major >= 24 || (major === 22 && minor >= 19)) return undefined;
  return (
    `this is Node.js ${version}, and Orderflow needs 22.19 or later on the 22 line, or 24 or later ` +
    `(package.json engines: "${NODE_ENGINES}"): install a newer Node.js, or run it through npm ` +
    '(npm start, npm run …) or npx node, which use the Node.js 24 that `npm ci` installs'
  );
}

const problem = nodeVersionProblem(process.versions.node);
if (problem !== undefined) {
  process.stderr.write(`orderflow: ${problem}\n`);
  process.exit(1);
}
