// Dead letters: what the pipeline gave up on, wherever this deployment keeps
// it (database, NATS, RabbitMQ), to inspect, re-drive or discard, one or
// many at a time.
import { html } from 'htm/preact';
import { useEffect, useState } from 'preact/hooks';
import { api } from './api.js';
import { count, seconds, time } from './format.js';

export function DeadLetters() {
  const [letters, setLetters] = useState({ items: [], nextCursor: null, loaded: false });
  const [selected, setSelected] = useState(new Set());
  const [results, setResults] = useState([]);
  const [error, setError] = useState(undefined);
  const load = async (cursor) => {
    try {
      const page = await api('GET', `/v1/admin/dead-letters?limit=50${cursor ? `&cursor=${cursor}` : ''}`);
      setLetters((l) => ({
        items: cursor ? [...l.items, ...page.items] : page.items,
        nextCursor: page.nextCursor,
        loaded: true,
      }));
      setError(undefined);
    } catch (e) {
      setError(e.message);
    }
  };
  useEffect(() => void load(), []);
  const toggle = (id) =>
    setSelected((s) => {
      const next = new Set(s);
      if (next.has(id)) next.delete(id);
      else next.add(id);
      return next;
    });
  const settle = async (action) => {
    try {
      const { results } = await api('POST', `/v1/admin/dead-letters/${action}`, { ids: [...selected] });
      setResults(results);
      setSelected(new Set());
      await load();
    } catch (e) {
      setError(e.message);
    }
  };
  return html`
    <h1>Dead letters</h1>
    <div class="toolbar">
      <button type="button" onClick=${() => settle('redrive')} disabled=${selected.size === 0}>
        Re-drive selected (${count(selected.size, 'letter')})
      </button>
      <button type="button" class="danger" onClick=${() => settle('discard')} disabled=${selected.size === 0}>
        Discard selected
      </button>
      <button type="button" class="secondary" onClick=${() => load()}>Refresh</button>
    </div>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${
      results.length > 0 &&
      html`<ul class="results" role="status">
        ${results.map((r) => html`<li data-result=${r.outcome}><code>${r.id}</code>: ${r.outcome}${r.reopened ? ' (order pending again)' : ''}${r.detail ? ` — ${r.detail}` : ''}</li>`)}
      </ul>`
    }
    ${letters.loaded && letters.items.length === 0 && html`<p data-empty>No dead letters.</p>`}
    <div class="table-wrap">
      <table data-table="dead-letters">
        <thead>
          <tr>
            <th scope="col">Select</th>
            <th scope="col">Queue</th>
            <th scope="col">Order</th>
            <th scope="col">Reason</th>
            <th scope="col">Attempts</th>
            <th scope="col">Age</th>
            <th scope="col">Message</th>
          </tr>
        </thead>
        <tbody>
          ${letters.items.map(
            (l) =>
              html`<tr data-letter=${l.id} data-order=${l.orderId ?? ''}>
                <td>
                  <input
                    type="checkbox"
                    aria-label=${`Select dead letter ${l.id}`}
                    checked=${selected.has(l.id)}
                    onChange=${() => toggle(l.id)}
                  />
                </td>
                <td><code>${l.queue}</code></td>
                <td>${l.orderId ? html`<a href=${`#/orders/${l.orderId}`}><code>${l.orderId}</code></a>` : '—'}</td>
                <td class="reason">${l.reason}</td>
                <td class="num">${l.attempts === null ? 'not recorded' : count(l.attempts, 'attempt')}</td>
                <td class="num" title=${time(l.diedAt)}>${seconds(l.ageSeconds)}</td>
                <td>
                  <details>
                    <summary>Inspect</summary>
                    <pre>${l.body}</pre>
                  </details>
                </td>
              </tr>`,
          )}
        </tbody>
      </table>
    </div>
    ${letters.nextCursor && html`<button type="button" class="secondary" onClick=${() => load(letters.nextCursor)}>Load more</button>`}
  `;
}
