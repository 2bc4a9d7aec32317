// What one measured window of a run cost per order: CPU seconds of every
// part of the system from /proc, WAL bytes written. CPU time is the figure
// that survives a shared, noisy machine best: a busy neighbour slows the
// run down but does not make an order cost more instructions.
import { cpuBetween, cpuSnapshot, pidsNamed, type CpuPart, type CpuSnapshot } from './cpu.ts';
import { BENCH_APPLICATION_NAME, type Target } from './targets.ts';
import { round } from './stats.ts';

/** PostgreSQL's background processes, shared by every database on the server. */
const SHARED_BACKEND_TYPES = [
  'walwriter',
  'checkpointer',
  'background writer',
  'autovacuum launcher',
  'logical replication launcher',
  'archiver',
  'walsender',
];

export interface CostPart {
  name: string;
  /** Where the part belongs: counted in Orderflow's total, in PostgreSQL's, or reported apart. */
  group: 'orderflow' | 'postgres' | 'apart';
  cpuSeconds: number;
  /** CPU milliseconds per order counted. */
  msPerOrder: number;
}

export interface Costs {
  orders: number;
  seconds: number;
  parts: CostPart[];
  orderflowMsPerOrder: number;
  postgresMsPerOrder: number;
  /** WAL bytes per order (the whole server's WAL: other databases' writes count too), if PostgreSQL. */
  walBytesPerOrder: number | undefined;
  /** Transactions (commits and rollbacks) of the target's database per order, if PostgreSQL: every round of BEGIN … COMMIT, or statement outside one, that a process ran. */
  transactionsPerOrder: number | undefined;
}

export interface CostWindow {
  /**
   * Ends the window; `orders` is what the window's CPU is divided by.
   * `apart`: CPU seconds of parts measured by themselves (the load generator
   * reports its own, as it exits before its /proc can be read).
   */
  stop(orders: number, apart?: Record<string, number>): Promise<Costs>;
}

/**
 * Starts measuring. Each server process of the target is a part of its own
 * (a role process, or a node:cluster copy and its supervisor); PostgreSQL's
 * backends of the target's database are one part and its shared background
 * processes another; the load generator (see `stop`) and the bench process itself (which hosts the simulated HTTP gateway in the distributed
 * mode) are reported apart, as is a local nats-server. `otlpReceiver`: the
 * bench process also receives the run's spans (--tracing).
 */
export async function startCostWindow(target: Target, options: { otlpReceiver?: boolean } = {}): Promise<CostWindow> {
  const servers = await target.processes();
  const embedded = target.mode === 'embedded';
  const nats = target.brokerUrl?.startsWith('nats:') ? await pidsNamed('nats-server') : [];
  const parts = async (): Promise<(CpuPart & { group: CostPart['group'] })[]> => {
    const postgres = embedded ? { backends: [], shared: [] } : await postgresPids(target);
    return [
      ...servers.map((p) => ({
        name: embedded ? `${p.name} (bench process: Orderflow, PGlite, in-process gateway)` : p.name,
        pids: [p.pid],
        group: 'orderflow' as const,
      })),
      ...(embedded
        ? []
        : [
            { name: 'PostgreSQL backends of this database', pids: postgres.backends, group: 'postgres' as const },
            {
              name: 'PostgreSQL shared processes (WAL writer, checkpointer, …; serve every database)',
              pids: postgres.shared,
              group: 'apart' as const,
            },
            {
              name: `bench process (simulated HTTP gateway${options.otlpReceiver ? ', OTLP receiver' : ''})`,
              pids: [process.pid],
              group: 'apart' as const,
            },
          ]),
      ...(nats.length > 0
        ? [{ name: 'nats-server (shared with anything else using it)', pids: nats, group: 'apart' as const }]
        : []),
    ];
  };
  const started = performance.now();
  const before: CpuSnapshot = await cpuSnapshot(await parts());
  const walBefore = embedded ? undefined : await walLsn(target);
  const transactionsBefore = embedded ? undefined : await transactionCount(target);
  return {
    async stop(orders, apart = {}) {
      const finalParts = await parts();
      const after = await cpuSnapshot(finalParts);
      const walAfter = embedded ? undefined : await walLsn(target);
      const transactionsAfter = embedded ? undefined : await transactionCount(target);
      const used = cpuBetween(before, after);
      const perOrder = (seconds: number) => (orders > 0 ? round((seconds * 1000) / orders, 3) : 0);
      const costParts: CostPart[] = finalParts.map((p) => ({
        name: p.name,
        group: p.group,
        cpuSeconds: round(used.get(p.name) ?? 0, 2),
        msPerOrder: perOrder(used.get(p.name) ?? 0),
      }));
      for (const [name, seconds] of Object.entries(apart))
        costParts.push({ name, group: 'apart', cpuSeconds: round(seconds, 2), msPerOrder: perOrder(seconds) });
      const sum = (group: CostPart['group']) =>
        perOrder(finalParts.filter((p) => p.group === group).reduce((s, p) => s + (used.get(p.name) ?? 0), 0));
      let walBytesPerOrder: number | undefined;
      if (walBefore !== undefined && walAfter !== undefined && orders > 0) {
        const [row] = await target.db.query<{ bytes: string }>(
          'SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::text AS bytes',
          [walAfter, walBefore],
        );
        walBytesPerOrder = Math.round(Number(row?.bytes ?? 0) / orders);
      }
      return {
        orders,
        seconds: round((performance.now() - started) / 1000, 1),
        parts: costParts,
        orderflowMsPerOrder: sum('orderflow'),
        postgresMsPerOrder: sum('postgres'),
        walBytesPerOrder,
        transactionsPerOrder:
          transactionsBefore !== undefined && transactionsAfter !== undefined && orders > 0
            ? round((transactionsAfter - transactionsBefore) / orders, 3)
            : undefined,
      };
    },
  };
}

async function postgresPids(target: Target): Promise<{ backends: number[]; shared: number[] }> {
  const rows = await target.db.query<{ pid: number; own: boolean }>(
    `SELECT pid, datname = current_database() AS own FROM pg_stat_activity
      WHERE pid <> pg_backend_pid()
        AND ((datname = current_database() AND application_name <> $1) OR backend_type = ANY($2::text[]))`,
    [BENCH_APPLICATION_NAME, SHARED_BACKEND_TYPES],
  );
  return {
    backends: rows.filter((r) => r.own).map((r) => Number(r.pid)),
    shared: rows.filter((r) => !r.own).map((r) => Number(r.pid)),
  };
}

async function walLsn(target: Target): Promise<string | undefined> {
  const [row] = await target.db.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn');
  return row?.lsn;
}

/**
 * Commits and rollbacks of the target's database so far (pg_stat_database).
 * Each backend reports its counts when it goes idle, at most a second late;
 * the window ends after the drain, when the processes are idle.
 */
async function transactionCount(target: Target): Promise<number | undefined> {
  await target.db.query('SELECT pg_stat_clear_snapshot()');
  const [row] = await target.db.query<{ count: string }>(
    'SELECT (xact_commit + xact_rollback)::text AS count FROM pg_stat_database WHERE datname = current_database()',
  );
  return row ? Number(row.count) : undefined;
}

/** The figures of a cost window, as table rows. */
export function costFigures(costs: Costs, what: string): { label: string; value: number | string | null }[] {
  const rows: { label: string; value: number | string | null }[] = [
    { label: `CPU ms per ${what}: Orderflow, all processes`, value: costs.orderflowMsPerOrder },
    ...(costs.parts.some((p) => p.group === 'postgres')
      ? [{ label: `CPU ms per ${what}: PostgreSQL backends`, value: costs.postgresMsPerOrder }]
      : []),
  ];
  for (const part of costs.parts)
    rows.push({
      label: `  ${part.name}`,
      value: `${part.msPerOrder} ms (${part.cpuSeconds} s CPU in ${costs.seconds} s)`,
    });
  if (costs.walBytesPerOrder !== undefined)
    rows.push({ label: `WAL bytes per ${what} (whole server)`, value: costs.walBytesPerOrder });
  if (costs.transactionsPerOrder !== undefined)
    rows.push({ label: `PostgreSQL transactions per ${what} (this database)`, value: costs.transactionsPerOrder });
  return rows;
}
