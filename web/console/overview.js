// Overview: the live figures of every process (Server-Sent Events from
// /v1/admin/figures/stream, read with fetch so the bearer token goes along),
// plotted with uPlot over the last few minutes, and the two invariants an
// operator watches as red/green tiles.
import { html } from 'htm/preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import uPlot from 'uplot';
import { EventSourceParserStream } from 'eventsource-parser/stream';
import { api, session } from './api.js';
import { count, figure, seconds } from './format.js';

/** Readings kept per chart: one a second, so about five minutes. */
const WINDOW = 300;

const CHARTS = [
  {
    id: 'orders',
    title: 'Orders',
    unit: 'orders/s',
    series: [
      { label: 'accepted', stroke: '#2563eb', pick: (t) => t.orders.acceptedPerSecond },
      { label: 'confirmed', stroke: '#16a34a', pick: (t) => t.orders.confirmedPerSecond },
      { label: 'rejected', stroke: '#dc2626', pick: (t) => t.orders.rejectedPerSecond },
    ],
  },
  {
    id: 'latency',
    title: 'Accept latency (slowest process)',
    unit: 'ms',
    series: [
      { label: 'p50', stroke: '#0891b2', pick: (t) => t.acceptLatencyMs?.p50 ?? null },
      { label: 'p95', stroke: '#9333ea', pick: (t) => t.acceptLatencyMs?.p95 ?? null },
      { label: 'p99', stroke: '#c2410c', pick: (t) => t.acceptLatencyMs?.p99 ?? null },
    ],
  },
  {
    id: 'backlog',
    title: 'Queue and outbox backlog',
    unit: 'messages',
    series: [
      { label: 'charges queued', stroke: '#2563eb', pick: (t) => t.backlog['payments.charge'] ?? 0 },
      { label: 'refunds queued', stroke: '#9333ea', pick: (t) => t.backlog['payments.refund'] ?? 0 },
      { label: 'outbox', stroke: '#ca8a04', pick: (t) => sum(t.outbox) },
    ],
  },
  {
    id: 'gateway',
    title: 'Payment gateway',
    unit: 'ms',
    series: [{ label: 'mean latency', stroke: '#0f766e', pick: (t) => t.gateway.meanLatencyMs }],
  },
  {
    id: 'batches',
    title: 'Group-commit batch size',
    unit: 'per batch',
    series: [
      { label: 'accept', stroke: '#2563eb', pick: (t) => t.batches.accept.meanSize },
      { label: 'pay worker', stroke: '#16a34a', pick: (t) => t.batches.worker.meanSize },
    ],
  },
];

function sum(record) {
  return Object.values(record ?? {}).reduce((a, b) => a + b, 0);
}

/** Reads the figures stream until unmounted, reconnecting after a drop. */
function useFigures(onReading) {
  const [state, setState] = useState('connecting');
  useEffect(() => {
    const controller = new AbortController();
    const run = async () => {
      while (!controller.signal.aborted) {
        try {
          const response = await fetch('/v1/admin/figures/stream', {
            headers: { authorization: `Bearer ${session.token}`, accept: 'text/event-stream' },
            signal: controller.signal,
          });
          if (response.status === 401) return window.dispatchEvent(new CustomEvent('orderflow:signed-out'));
          if (!response.ok) throw new Error(`HTTP ${response.status}`);
          setState('live');
          const events = response.body.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream());
          for await (const event of events) {
            if (event.event === 'figures') onReading(JSON.parse(event.data));
            else if (event.event === 'unavailable') setState('database unavailable');
          }
          setState('reconnecting');
        } catch (error) {
          if (controller.signal.aborted) return;
          setState(`reconnecting (${error.message})`);
        }
        await new Promise((resolve) => setTimeout(resolve, 2000));
      }
    };
    void run();
    return () => controller.abort();
  }, []);
  return state;
}

function Chart({ spec, data, readings }) {
  const box = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    // The element as mounted: Preact clears the ref before this effect's cleanup runs.
    const element = box.current;
    const width = () => Math.max(240, element.clientWidth);
    plot.current = new uPlot(
      {
        width: width(),
        height: 180,
        series: [
          {},
          ...spec.series.map((s) => ({
            label: `${s.label} (${spec.unit})`,
            stroke: s.stroke,
            width: 2,
            spanGaps: true,
          })),
        ],
        axes: [{}, { label: spec.unit, size: 60 }],
        scales: { x: { time: true } },
        legend: { live: false },
      },
      data,
      element,
    );
    const resize = new ResizeObserver(() => plot.current?.setSize({ width: width(), height: 180 }));
    resize.observe(element);
    return () => {
      resize.disconnect();
      plot.current.destroy();
      plot.current = null;
    };
  }, []);
  useEffect(() => plot.current?.setData(data), [data]);
  const latest = spec.series.map((s, i) => `${s.label} ${figure(data[i + 1].at(-1), spec.unit)}`).join(', ');
  return html`
    <figure class="chart" data-chart=${spec.id} data-readings=${readings}>
      <figcaption>${spec.title} <span class="unit">(${spec.unit})</span></figcaption>
      <div ref=${box} role="img" aria-label=${`${spec.title}: ${latest}`}></div>
    </figure>
  `;
}

function Tile({ id, title, ok, children }) {
  return html`
    <section
      class=${`tile ${ok === undefined ? '' : ok ? 'ok' : 'bad'}`}
      data-tile=${id}
      data-state=${ok === undefined ? 'unknown' : ok ? 'ok' : 'bad'}
      aria-live="polite"
    >
      <h2>${title}</h2>
      ${children}
    </section>
  `;
}

function useInvariants() {
  const [invariants, setInvariants] = useState(undefined);
  const [error, setError] = useState(undefined);
  useEffect(() => {
    let stopped = false;
    const read = async () => {
      try {
        const value = await api('GET', '/v1/admin/invariants');
        if (stopped) return;
        setInvariants(value);
        setError(undefined);
      } catch (e) {
        if (!stopped) setError(e.message);
      }
    };
    void read();
    // The check reads every confirmed order line: every five seconds is plenty.
    const timer = setInterval(read, 5000);
    return () => ((stopped = true), clearInterval(timer));
  }, []);
  return { invariants, error };
}

export function Overview() {
  const [history, setHistory] = useState({ times: [], readings: [] });
  const state = useFigures((reading) =>
    setHistory((h) => ({
      times: [...h.times, Date.parse(reading.at) / 1000].slice(-WINDOW),
      readings: [...h.readings, reading].slice(-WINDOW),
    })),
  );
  const { invariants, error } = useInvariants();
  const latest = history.readings.at(-1);
  const totals = latest?.totals;
  const dataOf = (spec) => [history.times, ...spec.series.map((s) => history.readings.map((r) => s.pick(r.totals)))];
  const oversold = invariants?.oversoldSkus;
  const pending = invariants?.pendingOrders;
  return html`
    <h1>Overview</h1>
    <p class="status" data-stream=${state}>
      Live figures: ${state}${totals ? html` · ${count(totals.processes, 'process', 'processes')} reporting` : ''}
    </p>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <div class="tiles">
      <${Tile} id="oversold" title="Oversold SKUs" ok=${oversold && oversold.length === 0}>
        ${
          oversold === undefined
            ? html`<p>—</p>`
            : oversold.length === 0
              ? html`<p class="big">${count(0, 'SKU')}</p>
                  <p>Confirmed orders never exceed stock.</p>`
              : html`<p class="big">${count(oversold.length, 'SKU')}</p>
                  <ul>
                    ${oversold.map((o) => html`<li><code>${o.sku}</code>: ${count(o.confirmedQuantity, 'unit')} confirmed, ${count(o.stock, 'unit')} in stock</li>`)}
                  </ul>`
        }
      <//>
      <${Tile} id="overdue" title="Orders pending past the deadline" ok=${pending && pending.overdue === 0}>
        ${
          pending === undefined
            ? html`<p>—</p>`
            : html`<p class="big">${count(pending.overdue, 'order')}</p>
                <p>
                  ${count(pending.count, 'order')} pending; oldest ${seconds(pending.oldestAgeSeconds)}; deadline
                  ${seconds(pending.deadlineSeconds)}.
                </p>`
        }
      <//>
      <${Tile} id="gateway" title="Payment gateway" ok=${totals ? totals.gateway.circuit !== 'open' : undefined}>
        ${
          totals
            ? html`<p class="big">circuit ${totals.gateway.circuit ?? 'n/a'}</p>
                <p>
                  ${figure(totals.gateway.callsPerSecond, 'calls/s')}, mean
                  ${figure(totals.gateway.meanLatencyMs, 'ms')}
                </p>`
            : html`<p>—</p>`
        }
      <//>
      <${Tile} id="throughput" title="Right now">
        ${
          totals
            ? html`<p class="big" data-figure="accepted">
                  ${figure(totals.orders.acceptedPerSecond, 'orders/s')} accepted
                </p>
                <p>
                  ${figure(totals.orders.confirmedPerSecond, 'orders/s')} confirmed,
                  ${figure(totals.orders.rejectedPerSecond, 'orders/s')} rejected
                </p>`
            : html`<p>—</p>`
        }
      <//>
    </div>
    <div class="charts">
      ${CHARTS.map((spec) => html`<${Chart} key=${spec.id} spec=${spec} data=${dataOf(spec)} readings=${history.readings.length} />`)}
    </div>
    <h2>Processes</h2>
    <div class="table-wrap">
      <table data-table="processes">
        <thead>
          <tr>
            <th scope="col">Process</th>
            <th scope="col">Role</th>
            <th scope="col">Accepted</th>
            <th scope="col">Confirmed</th>
            <th scope="col">Accept p95</th>
            <th scope="col">Gateway</th>
            <th scope="col">Backlog</th>
            <th scope="col">Batch (accept / pay)</th>
          </tr>
        </thead>
        <tbody>
          ${(latest?.processes ?? []).map(
            (p) =>
              html`<tr data-process=${p.processId}>
                <td><code>${p.processId}</code></td>
                <td>${p.role}</td>
                <td>${figure(p.figures.orders.acceptedPerSecond, 'orders/s')}</td>
                <td>${figure(p.figures.orders.confirmedPerSecond, 'orders/s')}</td>
                <td>${figure(p.figures.acceptLatencyMs?.p95, 'ms')}</td>
                <td>
                  ${p.figures.gateway ? `${p.figures.gateway.circuit}, ${figure(p.figures.gateway.meanLatencyMs, 'ms')}` : 'n/a'}
                </td>
                <td>${p.figures.backlog ? count(sum(p.figures.backlog), 'message') : 'unread'}</td>
                <td>
                  ${figure(p.figures.batches.accept.meanSize, 'orders/batch')} /
                  ${figure(p.figures.batches.worker.meanSize, 'jobs/batch')}
                </td>
              </tr>`,
          )}
        </tbody>
      </table>
    </div>
  `;
}
