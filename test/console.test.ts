// The operators' console in real Chromium (Debian's, driven by
// playwright-core), against an embedded Orderflow serving it at /console:
// sign in with the development token button, watch the overview's charts
// move while orders come in, follow an order's timeline to confirmed,
// change stock in the catalog and read it back through the API, re-drive a
// payment from the dead letters once the gateway is fixed, and cancel an
// order down to its refund. One browser for the whole suite. Each page is
// saved as a screenshot in artifacts/console/ (docs/img/ keeps copies for
// the README), at a laptop's width and at a phone's.
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { PoisonGateway } from './support/gateways.ts';
import { skipUnlessInstalled } from './support/programs.ts';
import {
  ALL_SCOPES,
  client,
  createProduct,
  eventually,
  placeOrder,
  quiesce,
  startTestApp,
  type Client,
  type TestApp,
} from './support/harness.ts';

const CHROMIUM = '/usr/bin/chromium';
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const ARTIFACTS = path.resolve(process.env.ARTIFACTS_DIR ?? 'artifacts', 'console');
const LAPTOP = { width: 1280, height: 860 };
const PHONE = { width: 390, height: 844 };

/** In the page: the document is no wider than the window (checked as text: this file is compiled without the DOM's types). */
const NO_SIDEWAYS_SCROLL = 'document.documentElement.scrollWidth <= window.innerWidth + 1';
/** In the page: a canvas's pixels, as a data URL. */
const pixels = (canvas: unknown) => (canvas as { toDataURL(): string }).toDataURL();

const skip = skipUnlessInstalled('the console tests', { chromium: ['--version'] });

describe('console in Chromium (embedded)', { skip }, () => {
  let t: TestApp;
  let gateway: PoisonGateway;
  let browser: Browser;
  let page: Page;
  let base: string;
  let seller: Client;
  let shopper: Client;
  const errors: string[] = [];

  before(async () => {
    gateway = new PoisonGateway({ latencyMs: 5 });
    t = await startTestApp('embedded', { gateway, env: { PENDING_DEADLINE_MS: '3600000' } });
    base = await t.app.server.listen({ port: 0, host: '127.0.0.1' });
    seller = client(t.app, await t.token('seller', ALL_SCOPES));
    shopper = client(t.app, await t.token('dana', 'orders:write orders:read'));
    await createProduct(seller, { sku: 'CON-MUG', stock: 500, priceCents: 1299, name: 'Console mug' });
    await createProduct(seller, { sku: 'CON-TEA', stock: 40, priceCents: 450, name: 'Loose-leaf tea' });
    await mkdir(ARTIFACTS, { recursive: true });
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
    page = await browser.newPage({ viewport: LAPTOP });
    page.on('pageerror', (error) => errors.push(error.message));
    page.on('console', (message) => void (message.type() === 'error' && errors.push(message.text())));
  });
  after(async () => {
    await browser?.close();
    await t?.close();
  });

  const shot = (name: string) => page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
  /** Screenshots at a laptop's width and a phone's, where the page must not scroll sideways. */
  const shotBothWidths = async (name: string) => {
    await shot(name);
    await page.setViewportSize(PHONE);
    await shot(`${name}-phone`);
    assert.ok(await page.evaluate<boolean>(NO_SIDEWAYS_SCROLL), `${name}: no sideways scrolling on a phone`);
    await page.setViewportSize(LAPTOP);
  };
  const go = async (hash: string) => {
    await page.goto(`${base}/console/${hash}`);
    await page.waitForSelector('main#content');
  };

  it('signs in with the development token button, offered to a loopback visitor', async () => {
    await page.goto(`${base}/console`);
    const mint = page.getByRole('button', { name: 'Mint an operator token and sign in' });
    await mint.waitFor();
    await shot('sign-in');
    await mint.click();
    await page.getByRole('navigation', { name: 'Console pages' }).waitFor();
    assert.equal(await page.getByRole('link', { name: 'Overview' }).getAttribute('aria-current'), 'page');
    assert.deepEqual(errors, []);
  });

  it('overview: the charts move while orders are placed, and the invariant tiles are green', async () => {
    await go('#/overview');
    await page.waitForSelector('[data-stream="live"]');
    const canvas = page.locator('[data-chart="orders"] canvas');
    await canvas.waitFor();
    const before = await canvas.evaluate(pixels);
    const readingsBefore = Number(await page.locator('[data-chart="orders"]').getAttribute('data-readings'));
    // Orders keep coming until the overview has shown them.
    let placing = true;
    const placed = (async () => {
      for (let i = 0; placing; i++) {
        await placeOrder(shopper, [{ sku: 'CON-MUG', quantity: 1 }]);
        await new Promise((resolve) => setTimeout(resolve, 40));
      }
    })();
    try {
      // A reading with orders in it: the figure is above zero.
      await page.waitForFunction(
        `/^([1-9]|0[.,]\\d*[1-9])/.test(document.querySelector('[data-figure="accepted"]')?.textContent ?? '')`,
        undefined,
        { timeout: 20_000 },
      );
      await page.waitForFunction(
        `Number(document.querySelector('[data-chart="orders"]')?.getAttribute('data-readings')) >= ${readingsBefore + 3}`,
        undefined,
        { timeout: 20_000 },
      );
    } finally {
      placing = false;
      await placed;
    }
    const afterwards = await canvas.evaluate(pixels);
    assert.notEqual(afterwards, before, 'the orders chart was redrawn with the new readings');
    assert.match((await page.locator('[data-figure="accepted"]').textContent()) ?? '', /orders\/s accepted$/);
    await quiesce(t.app);
    await page.waitForSelector('[data-tile="oversold"][data-state="ok"]');
    await page.waitForSelector('[data-tile="overdue"][data-state="ok"]');
    assert.equal(await page.locator('[data-table="processes"] tbody tr').count(), 1);
    await shotBothWidths('overview');
  });

  it('orders: finds an order by customer and follows its timeline to confirmed', async () => {
    const placed = await placeOrder(shopper, [{ sku: 'CON-TEA', quantity: 2 }]);
    await go('#/orders');
    await page.getByLabel('Customer').fill('dana');
    await page.getByLabel('SKU').fill('CON-TEA');
    await page.getByRole('button', { name: 'Search' }).click();
    const row = page.locator(`tr[data-order="${placed.body.id}"]`);
    await row.waitFor();
    assert.match((await row.textContent()) ?? '', /€9\.00/);
    await shot('orders');
    await row.getByRole('link').click();
    await page.waitForSelector('[data-timeline] li[data-event="confirmed"]');
    const timeline = await page
      .locator('[data-timeline] li')
      .evaluateAll((items) => items.map((li) => li.getAttribute('data-event')));
    assert.deepEqual(timeline, ['accepted', 'stock_held', 'charge_attempted', 'charged', 'confirmed']);
    assert.equal(await page.locator('[data-table="money"] tr[data-movement="charged"]').count(), 1);
  });

  it('catalog: a stock change made in the console reads back through the API', async () => {
    const before = (await seller.request('GET', '/v1/products/CON-TEA')).body;
    await go('#/catalog');
    const row = page.locator('tr[data-sku="CON-TEA"]');
    await row.waitFor();
    assert.equal(await row.locator('[data-field="available"]').textContent(), `${before.available} units`);
    await row.getByLabel('Change stock of CON-TEA by (units, negative to remove)').fill('7');
    await row.getByRole('button', { name: 'Apply' }).click();
    await row.getByRole('status').waitFor();
    const afterwards = (await seller.request('GET', '/v1/products/CON-TEA')).body;
    assert.deepEqual([afterwards.stock, afterwards.available], [before.stock + 7, before.available + 7]);
    await page.waitForFunction(
      `document.querySelector('tr[data-sku="CON-TEA"] [data-field="stock"]')?.textContent === '${before.stock + 7} units'`,
    );
    assert.equal(await row.locator('[data-field="held"]').textContent(), `${before.stock - before.available} units`);
    await shot('catalog');
  });

  it('dead letters: a refused payment is re-driven from the console once the gateway is fixed, and the order confirms', async () => {
    const placed = await placeOrder(shopper, [{ sku: 'CON-MUG', quantity: 3 }], 'tok_refused');
    const id = placed.body.id as string;
    await quiesce(t.app);
    assert.equal((await seller.request('GET', `/v1/orders/${id}`)).body.rejectReason, 'payment_failed');
    await go('#/dead-letters');
    const row = page.locator(`tr[data-order="${id}"]`);
    await row.waitFor();
    assert.match((await row.textContent()) ?? '', /payment can never succeed.*no such token.*1 attempt/);
    await row.getByText('Inspect').click();
    await shot('dead-letters');
    gateway.cured = true;
    await row.getByRole('checkbox').check();
    await page.getByRole('button', { name: /Re-drive selected \(1 letter\)/ }).click();
    await page.waitForSelector('[data-result="redriven"]');
    await row.waitFor({ state: 'detached' });
    await go(`#/orders/${id}`);
    await page.waitForSelector('[data-timeline] li[data-event="confirmed"]');
    assert.ok((await page.locator('[data-timeline] li[data-event="redriven"]').count()) === 1);
    assert.deepEqual(gateway.netCharged(id), { charges: 1, netCents: 3897 });
  });

  it('orders: cancels a confirmed order and sees its refund in the timeline and money movements', async () => {
    const placed = await placeOrder(shopper, [{ sku: 'CON-MUG', quantity: 1 }]);
    const id = placed.body.id as string;
    await eventually('the order to confirm', async () =>
      (await shopper.request('GET', `/v1/orders/${id}`)).body.status === 'confirmed' ? true : undefined,
    );
    await go(`#/orders/${id}`);
    await page.getByRole('button', { name: 'Cancel order…' }).click();
    await page.getByRole('button', { name: 'Yes, cancel the order' }).click();
    await page.waitForSelector('[data-timeline] li[data-event="refunded"]');
    assert.equal(await page.locator('[data-status="cancelled"]').count(), 1);
    assert.deepEqual(
      await page
        .locator('[data-table="money"] tbody tr')
        .evaluateAll((rows) => rows.map((r) => r.getAttribute('data-movement'))),
      ['charged', 'refund_requested', 'refunded'],
    );
    assert.match((await page.locator('tr[data-movement="refunded"]').textContent()) ?? '', /€12\.99/);
    assert.deepEqual(gateway.netCharged(id), { charges: 1, netCents: 0 });
    await shotBothWidths('order-detail');
  });

  it('is keyboard reachable: Tab reaches the page links, Enter follows them', async () => {
    await go('#/overview');
    // From the top of a fresh page.
    await page.reload();
    await page.waitForSelector('main#content');
    const focused: string[] = [];
    for (let i = 0; i < 10 && !focused.includes('Dead letters'); i++) {
      await page.keyboard.press('Tab');
      focused.push(await page.evaluate<string>("document.activeElement?.textContent?.trim() ?? ''"));
    }
    assert.ok(focused.includes('Dead letters'), `focus went ${JSON.stringify(focused)}`);
    await page.keyboard.press('Enter');
    await page.waitForFunction("location.hash === '#/dead-letters'");
    await page.waitForSelector('h1:text("Dead letters")');
    assert.deepEqual(errors, [], 'no script errors on any page');
  });
});
