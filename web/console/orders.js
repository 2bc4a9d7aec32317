// Orders: search across customers, and one order's detail with its event
// timeline, payment attempts and money movements, and a cancel button.
import { html } from 'htm/preact';
import { useEffect, useState } from 'preact/hooks';
import { api } from './api.js';
import { count, money, time } from './format.js';

const STATUSES = ['pending', 'confirmed', 'rejected', 'cancelled'];
const REASONS = ['out_of_stock', 'payment_declined', 'payment_failed'];

function Status({ status, reason }) {
  return html`<span class=${`badge ${status}`} data-status=${status}>${status}${reason ? ` (${reason})` : ''}</span>`;
}

export function Orders() {
  const [filters, setFilters] = useState({ status: '', rejectReason: '', customerId: '', sku: '', from: '', to: '' });
  const [result, setResult] = useState({ items: [], nextCursor: null, searched: false });
  const [error, setError] = useState(undefined);
  const query = (cursor) => {
    const params = new URLSearchParams({ limit: '25' });
    for (const [name, value] of Object.entries(filters)) {
      if (!value) continue;
      // datetime-local inputs are local times without a zone: send RFC 3339.
      params.set(name, name === 'from' || name === 'to' ? new Date(value).toISOString() : value.trim());
    }
    if (cursor) params.set('cursor', cursor);
    return `/v1/admin/orders?${params}`;
  };
  const search = async (cursor) => {
    try {
      const page = await api('GET', query(cursor));
      setResult((r) => ({
        items: cursor ? [...r.items, ...page.items] : page.items,
        nextCursor: page.nextCursor,
        searched: true,
      }));
      setError(undefined);
    } catch (e) {
      setError(
        e.problem?.errors?.map((f) => `${f.path.replace('/querystring/', '')}: ${f.message}`).join('; ') || e.message,
      );
    }
  };
  useEffect(() => void search(), []);
  const field = (name) => ({
    id: `f-${name}`,
    name,
    value: filters[name],
    onInput: (e) => setFilters((f) => ({ ...f, [name]: e.target.value })),
  });
  return html`
    <h1>Orders</h1>
    <form class="filters" role="search" onSubmit=${(e) => (e.preventDefault(), search())}>
      <div>
        <label for="f-status">Status</label>
        <select ...${field('status')} onChange=${field('status').onInput}>
          <option value="">any</option>
          ${STATUSES.map((s) => html`<option>${s}</option>`)}
        </select>
      </div>
      <div>
        <label for="f-rejectReason">Reject reason</label>
        <select ...${field('rejectReason')} onChange=${field('rejectReason').onInput}>
          <option value="">any</option>
          ${REASONS.map((s) => html`<option>${s}</option>`)}
        </select>
      </div>
      <div><label for="f-customerId">Customer</label><input ...${field('customerId')} maxlength="255" /></div>
      <div><label for="f-sku">SKU</label><input ...${field('sku')} maxlength="64" /></div>
      <div><label for="f-from">Created from</label><input type="datetime-local" step="1" ...${field('from')} /></div>
      <div><label for="f-to">Created before</label><input type="datetime-local" step="1" ...${field('to')} /></div>
      <div class="actions"><button type="submit">Search</button></div>
    </form>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <div class="table-wrap">
      <table data-table="orders">
        <thead>
          <tr>
            <th scope="col">Order</th>
            <th scope="col">Customer</th>
            <th scope="col">Status</th>
            <th scope="col">Items</th>
            <th scope="col">Total</th>
            <th scope="col">Created</th>
          </tr>
        </thead>
        <tbody>
          ${result.items.map(
            (o) =>
              html`<tr data-order=${o.id}>
                <td>
                  <a href=${`#/orders/${o.id}`}><code>${o.id}</code></a>
                </td>
                <td>${o.customerId}</td>
                <td><${Status} status=${o.status} reason=${o.rejectReason} /></td>
                <td>${o.items.map((i) => `${count(i.quantity, 'unit')} ${i.sku}`).join(', ')}</td>
                <td class="num">${money(o.totalCents, o.currency)}</td>
                <td>${time(o.createdAt)}</td>
              </tr>`,
          )}
        </tbody>
      </table>
    </div>
    ${result.searched && result.items.length === 0 && html`<p>No order matches.</p>`}
    ${result.nextCursor && html`<button type="button" class="secondary" onClick=${() => search(result.nextCursor)}>Load more</button>`}
  `;
}

/** One line of the timeline: what happened, in words, with its amounts in their currency. */
function describe(event, currency) {
  const d = event.detail;
  switch (event.type) {
    case 'accepted':
      return `accepted for ${money(d.totalCents, d.currency)} (customer ${d.customerId})`;
    case 'stock_held':
      return `stock held: ${d.lines.map((l) => `${count(l.quantity, 'unit')} of ${l.sku}`).join(', ')}`;
    case 'charge_attempted':
      return `charge attempt ${d.attempt}: ${d.outcome}${d.error ? ` — ${d.error}` : ''}`;
    case 'charged':
      return `charged ${money(d.amountCents, d.currency ?? currency)} (${d.chargeId})`;
    case 'confirmed':
      return 'confirmed';
    case 'rejected':
      return `rejected: ${d.reason}${d.error ? ` — ${d.error}` : ''}`;
    case 'cancel_requested':
      return `cancel requested by ${d.by} (was ${d.was}); stock released`;
    case 'refund_requested':
      return `refund of ${money(d.amountCents, d.currency ?? currency)} requested`;
    case 'refunded':
      return `refunded ${money(d.amountCents, d.currency ?? currency)} (${d.refundId})`;
    case 'refund_failed':
      return `refund of ${money(d.amountCents, d.currency ?? currency)} failed — ${d.error}`;
    case 'redriven':
      return `re-driven by ${d.by} from the ${d.queue} dead letters${d.reopened ? '; the order is pending again' : ''}`;
    case 'charge_voided':
      return d.sent
        ? 'charge voided at the gateway: nothing was charged, and nothing can be'
        : 'charge voided: it was never sent';
    case 'dead_letter_discarded':
      return `dead letter of ${d.queue} discarded by ${d.by}`;
    default:
      return event.type;
  }
}

export function OrderDetail({ id }) {
  const [body, setBody] = useState(undefined);
  const [error, setError] = useState(undefined);
  const [confirming, setConfirming] = useState(false);
  const [message, setMessage] = useState(undefined);
  const load = async () => {
    try {
      setBody(await api('GET', `/v1/admin/orders/${encodeURIComponent(id)}`));
      setError(undefined);
    } catch (e) {
      setError(e.message);
    }
  };
  useEffect(() => {
    void load();
    // The pipeline moves on its own: follow it while the page is open.
    const timer = setInterval(load, 1000);
    return () => clearInterval(timer);
  }, [id]);
  const cancel = async () => {
    setConfirming(false);
    try {
      await api('POST', `/v1/orders/${encodeURIComponent(id)}/cancel`, {});
      setMessage('Cancelled: the stock is back, and any payment is being refunded.');
      await load();
    } catch (e) {
      setMessage(`Not cancelled: ${e.message}`);
    }
  };
  if (error && !body)
    return html`<p><a href="#/orders">← Orders</a></p>
      <p class="error" role="alert">${error}</p>`;
  if (!body) return html`<p>Loading ${id}…</p>`;
  const { order, payment, events, moneyMovements } = body;
  const cancellable = order.status === 'pending' || order.status === 'confirmed';
  return html`
    <p><a href="#/orders">← Orders</a></p>
    <h1>Order <code>${order.id}</code></h1>
    <dl class="facts">
      <dt>Status</dt>
      <dd><${Status} status=${order.status} reason=${order.rejectReason} /></dd>
      <dt>Customer</dt>
      <dd>${order.customerId}</dd>
      <dt>Total</dt>
      <dd>${money(order.totalCents, order.currency)}</dd>
      <dt>Created</dt>
      <dd>${time(order.createdAt)}</dd>
      <dt>Payment</dt>
      <dd data-payment=${payment?.status ?? 'none'}>
        ${payment ? `${payment.status}${payment.lastError ? ` — ${payment.lastError}` : ''}` : 'none (never charged)'}
      </dd>
    </dl>
    <h2>Items</h2>
    <div class="table-wrap">
      <table>
        <thead>
          <tr>
            <th scope="col">SKU</th>
            <th scope="col">Quantity</th>
            <th scope="col">Unit price</th>
            <th scope="col">Line total</th>
          </tr>
        </thead>
        <tbody>
          ${order.items.map(
            (i) =>
              html`<tr>
                <td>${i.sku}</td>
                <td class="num">${count(i.quantity, 'unit')}</td>
                <td class="num">${money(i.priceCents, order.currency)}</td>
                <td class="num">${money(i.priceCents * i.quantity, order.currency)}</td>
              </tr>`,
          )}
        </tbody>
      </table>
    </div>
    ${
      cancellable &&
      html`<div class="danger-zone">
        ${
          confirming
            ? html`<p>Cancel this ${order.status} order? Its stock returns and any payment is refunded.</p>
                <button type="button" class="danger" onClick=${cancel}>Yes, cancel the order</button>
                <button type="button" class="secondary" onClick=${() => setConfirming(false)}>Keep it</button>`
            : html`<button type="button" class="danger" onClick=${() => setConfirming(true)}>Cancel order…</button>`
        }
      </div>`
    }
    ${message && html`<p class="notice" role="status">${message}</p>`}
    <h2>Timeline</h2>
    <ol class="timeline" data-timeline>
      ${events.map((e) => html`<li data-event=${e.type}><time datetime=${e.at}>${time(e.at)}</time> <span>${describe(e, order.currency)}</span></li>`)}
    </ol>
    <h2>Money movements</h2>
    ${
      moneyMovements.length === 0
        ? html`<p>No money moved.</p>`
        : html`<div class="table-wrap">
            <table data-table="money">
              <thead>
                <tr>
                  <th scope="col">When</th>
                  <th scope="col">Movement</th>
                  <th scope="col">Amount</th>
                  <th scope="col">Gateway id</th>
                </tr>
              </thead>
              <tbody>
                ${moneyMovements.map(
                  (e) =>
                    html`<tr data-movement=${e.type}>
                      <td>${time(e.at)}</td>
                      <td>${e.type.replace('_', ' ')}</td>
                      <td class="num">${money(e.detail.amountCents, e.detail.currency ?? order.currency)}</td>
                      <td>
                        <code
                          >${e.detail.chargeId && e.type === 'charged' ? e.detail.chargeId : (e.detail.refundId ?? '—')}</code
                        >
                      </td>
                    </tr>`,
                )}
              </tbody>
            </table>
          </div>`
    }
  `;
}
