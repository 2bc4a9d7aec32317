// The OpenAPI document: valid OpenAPI 3.1, complete against the contract
// (docs/api-contract.md), served by the API as it is committed, and
// committed up to date with the routes.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Validator } from '@seriousme/openapi-schema-validator';
import { checkOpenApi, generateOpenApi, REGENERATE_COMMAND } from '../scripts/openapi.ts';
import { OPENAPI_ROUTE } from '../src/http/openapi.ts';
import { startTestApp, type TestApp } from './support/harness.ts';

/**
 * Per contract route: the success statuses, the error statuses the contract
 * names for it, and the scopes it accepts (undefined: no auth; []: any valid
 * token). The statuses every route shares are checked separately.
 */
const CONTRACT_ROUTES: Record<string, { success: number[]; errors: number[]; scopes: string[] | undefined }> = {
  'GET /healthz': { success: [200], errors: [], scopes: undefined },
  'GET /readyz': { success: [200], errors: [503], scopes: undefined },
  'GET /metrics': { success: [200], errors: [], scopes: undefined },
  'POST /v1/products': { success: [201], errors: [409], scopes: ['catalog:write'] },
  'GET /v1/products/{sku}': { success: [200], errors: [404], scopes: [] },
  'GET /v1/products': { success: [200], errors: [], scopes: [] },
  'POST /v1/products/{sku}/stock': { success: [200], errors: [409], scopes: ['catalog:write'] },
  'POST /v1/orders': { success: [202, 200], errors: [422], scopes: ['orders:write'] },
  'GET /v1/orders/{id}': { success: [200], errors: [404], scopes: ['orders:read', 'orders:admin'] },
  'GET /v1/orders': { success: [200], errors: [], scopes: ['orders:read', 'orders:admin'] },
  'POST /v1/orders/{id}/cancel': { success: [200], errors: [404, 409], scopes: ['orders:write', 'orders:admin'] },
  'GET /v1/admin/orders': { success: [200], errors: [400], scopes: ['orders:admin'] },
  'GET /v1/admin/orders/{id}': { success: [200], errors: [404], scopes: ['orders:admin'] },
  'GET /v1/admin/products': { success: [200], errors: [400], scopes: ['orders:admin', 'catalog:write'] },
  'GET /v1/admin/invariants': { success: [200], errors: [], scopes: ['orders:admin'] },
  'GET /v1/admin/dead-letters': { success: [200], errors: [400], scopes: ['orders:admin', 'operations:write'] },
  'POST /v1/admin/dead-letters/redrive': { success: [200], errors: [400], scopes: ['operations:write'] },
  'POST /v1/admin/dead-letters/discard': { success: [200], errors: [400], scopes: ['operations:write'] },
  'GET /v1/admin/figures': { success: [200], errors: [], scopes: ['orders:admin'] },
  'GET /v1/admin/figures/stream': { success: [200], errors: [], scopes: ['orders:admin'] },
};

/** "METHOD /path" of every route the contract lists (some more than once, as later versions amend them), with {params} as OpenAPI writes them. */
async function contractRoutes(): Promise<string[]> {
  const text = await readFile(new URL('../docs/api-contract.md', import.meta.url), 'utf8');
  return [
    ...new Set([...text.matchAll(/^- `(GET|POST|PUT|PATCH|DELETE) (\/[^`?\s]*)/gm)].map((m) => `${m[1]} ${m[2]}`)),
  ];
}

describe('OpenAPI document', () => {
  let generated: string;
  let document: any;
  let t: TestApp;

  before(async () => {
    generated = await generateOpenApi();
    document = JSON.parse(generated);
    t = await startTestApp('embedded', { startWorkers: false });
  });
  after(() => t.close());

  function operation(route: string): any {
    const [method, path] = route.split(' ') as [string, string];
    const found = document.paths[path]?.[method.toLowerCase()];
    assert.ok(found, `${route} is missing from the document`);
    return found;
  }

  it('is valid OpenAPI 3.1', async () => {
    assert.equal(document.openapi, '3.1.0');
    const validator = new Validator();
    const result = await validator.validate(document);
    assert.deepEqual(result.errors, undefined);
    assert.equal(result.valid, true);
    assert.equal(validator.version, '3.1');
    assert.equal(document.info.title, 'Orderflow');
    const packageJson = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8'));
    assert.equal(document.info.version, packageJson.version);
    const bearer = document.components.securitySchemes.bearer;
    assert.deepEqual([bearer.type, bearer.scheme, bearer.bearerFormat], ['http', 'bearer', 'JWT']);
  });

  it("the route table of this test is the contract's", async () => {
    assert.deepEqual((await contractRoutes()).sort(), Object.keys(CONTRACT_ROUTES).sort());
  });

  for (const [route, expected] of Object.entries(CONTRACT_ROUTES)) {
    it(`${route}: its statuses, security and problem+json errors`, () => {
      const op = operation(route);
      const statuses = Object.keys(op.responses).map(Number);
      const hasBody = op.requestBody !== undefined;
      const required = [
        ...expected.success,
        ...expected.errors,
        // The contract's rules for every route: auth, bad input, body size, a dependency down.
        ...(expected.scopes !== undefined ? [401] : []),
        ...(expected.scopes?.length ? [403] : []),
        ...(hasBody ? [400, 413] : []),
        503,
      ];
      for (const status of required)
        assert.ok(statuses.includes(status), `${route} does not document ${status} (it has ${statuses.join(', ')})`);

      const security =
        expected.scopes === undefined
          ? []
          : expected.scopes.length === 0
            ? [{ bearer: [] }]
            : expected.scopes.map((s) => ({ bearer: [s] }));
      assert.deepEqual(op.security, security, `${route} security`);

      for (const [status, response] of Object.entries<any>(op.responses)) {
        assert.ok(
          response.description && response.description !== 'Default Response',
          `${route} ${status} has no description`,
        );
        if (Number(status) < 400) continue;
        assert.deepEqual(
          response.content,
          { 'application/problem+json': { schema: { $ref: '#/components/schemas/Problem' } } },
          `${route} ${status}`,
        );
      }
      assert.ok(op.responses[503].headers?.['Retry-After'], `${route} 503 names Retry-After`);
    });
  }

  it('describes the problem+json body', () => {
    const problem = document.components.schemas.Problem;
    assert.deepEqual(problem.required, ['type', 'title', 'status', 'detail']);
    assert.deepEqual(Object.keys(problem.properties), ['type', 'title', 'status', 'detail', 'errors']);
  });

  it('POST /v1/orders documents its Idempotency-Key and Location headers', () => {
    const op = operation('POST /v1/orders');
    assert.ok(op.parameters.some((p: any) => p.in === 'header' && p.name === 'idempotency-key' && p.required === true));
    for (const status of [200, 202]) assert.ok(op.responses[status].headers?.location, `${status} names Location`);
  });

  it('names the problem types a route can answer where a status has several meanings', () => {
    const placing = operation('POST /v1/orders').responses[422].description;
    for (const type of [
      'unknown-sku',
      'mixed-currencies',
      'amount-too-large',
      'amount-too-small',
      'idempotency-key-reused',
    ]) {
      assert.ok(placing.includes(`/problems/${type}`), `POST /v1/orders 422 does not name ${type}: ${placing}`);
    }
    assert.match(operation('POST /v1/products/{sku}/stock').responses[409].description, /stock-limit-exceeded/);
  });

  it(`GET ${OPENAPI_ROUTE} serves the same document, without auth`, async () => {
    const response = await t.app.server.inject({ method: 'GET', url: OPENAPI_ROUTE });
    assert.equal(response.statusCode, 200);
    assert.match(String(response.headers['content-type']), /^application\/json/);
    assert.equal(response.body, generated);
  });

  it('docs/openapi.json is up to date (as `npm run build` checks)', async () => {
    assert.equal(await checkOpenApi(generated), undefined);
    const stale = await checkOpenApi(generated.replace('"title": "Orderflow"', '"title": "Not Orderflow"'));
    assert.match(stale ?? '', new RegExp(`out of date.*${REGENERATE_COMMAND}`));
  });
});
