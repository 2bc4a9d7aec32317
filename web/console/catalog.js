// Catalog: every product with its stock on hand, held (by pending orders and
// sold to confirmed ones) and available, and a stock adjustment per product.
import { html } from 'htm/preact';
import { useEffect, useState } from 'preact/hooks';
import { api } from './api.js';
import { count, money } from './format.js';

function Adjust({ product, onAdjusted }) {
  const [delta, setDelta] = useState('');
  const [message, setMessage] = useState(undefined);
  const apply = async (e) => {
    e.preventDefault();
    try {
      const updated = await api('POST', `/v1/products/${encodeURIComponent(product.sku)}/stock`, {
        delta: Number(delta),
      });
      setMessage({
        ok: true,
        text: `Stock now ${count(updated.stock, 'unit')}, ${count(updated.available, 'unit')} available.`,
      });
      setDelta('');
      onAdjusted();
    } catch (error) {
      setMessage({ ok: false, text: error.message });
    }
  };
  const id = `delta-${product.sku}`;
  return html`
    <form class="adjust" onSubmit=${apply}>
      <label for=${id}>Change stock of ${product.sku} by (units, negative to remove)</label>
      <input id=${id} type="number" step="1" required value=${delta} onInput=${(e) => setDelta(e.target.value)} />
      <button type="submit">Apply</button>
      ${message && html`<span class=${message.ok ? 'notice' : 'error'} role="status">${message.text}</span>`}
    </form>
  `;
}

export function Catalog() {
  const [page, setPage] = useState({ items: [], nextCursor: null });
  const [error, setError] = useState(undefined);
  const load = async (cursor) => {
    try {
      const next = await api('GET', `/v1/admin/products?limit=50${cursor ? `&cursor=${cursor}` : ''}`);
      setPage((p) => ({ items: cursor ? [...p.items, ...next.items] : next.items, nextCursor: next.nextCursor }));
    } catch (e) {
      setError(e.message);
    }
  };
  useEffect(() => void load(), []);
  return html`
    <h1>Catalog</h1>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <div class="table-wrap">
      <table data-table="products">
        <thead>
          <tr>
            <th scope="col">SKU</th>
            <th scope="col">Name</th>
            <th scope="col">Price</th>
            <th scope="col">On hand</th>
            <th scope="col">Held</th>
            <th scope="col">Available</th>
            <th scope="col">Adjust</th>
          </tr>
        </thead>
        <tbody>
          ${page.items.map(
            (p) =>
              html`<tr data-sku=${p.sku}>
                <td><code>${p.sku}</code></td>
                <td>${p.name}</td>
                <td class="num">${money(p.priceCents, p.currency)}</td>
                <td class="num" data-field="stock">${count(p.stock, 'unit')}</td>
                <td class="num" data-field="held">${count(p.held, 'unit')}</td>
                <td class="num" data-field="available">${count(p.available, 'unit')}</td>
                <td><${Adjust} product=${p} onAdjusted=${() => load()} /></td>
              </tr>`,
          )}
        </tbody>
      </table>
    </div>
    ${page.nextCursor && html`<button type="button" class="secondary" onClick=${() => load(page.nextCursor)}>Load more</button>`}
  `;
}
