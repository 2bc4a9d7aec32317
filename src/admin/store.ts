// SQL of the admin module's table, admin.process_figures: one row per
// running process, replaced about once a second with what it measured (see
// figures.ts).
import type { Queryable } from '../storage/database.ts';
import type { ProcessFigures } from './figures.ts';

export interface ProcessIdentity {
  processId: string;
  role: string;
  host: string;
  pid: number;
  startedAt: Date;
}

/** Replaces this process's row. */
export async function writeProcessFigures(
  db: Queryable,
  identity: ProcessIdentity,
  figures: ProcessFigures,
): Promise<void> {
  await db.query(
    `INSERT INTO admin.process_figures (process_id, role, host, pid, started_at, figures) VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)
     ON CONFLICT (process_id) DO UPDATE SET updated_at = now(), figures = excluded.figures`,
    [
      identity.processId,
      identity.role,
      identity.host,
      identity.pid,
      identity.startedAt.toISOString(),
      JSON.stringify(figures),
    ],
  );
}

export async function deleteProcessFigures(db: Queryable, processId: string): Promise<void> {
  await db.query('DELETE FROM admin.process_figures WHERE process_id = $1', [processId]);
}

/** Rows of processes silent for longer than olderThanMs: they stopped (or lost the database); their figures are history. */
export async function deleteStaleFigures(db: Queryable, olderThanMs: number): Promise<void> {
  await db.query('DELETE FROM admin.process_figures WHERE updated_at < now() - make_interval(secs => $1::float8)', [
    olderThanMs / 1000,
  ]);
}

export interface ProcessFiguresRow extends ProcessIdentity {
  /** RFC 3339 time of the row's last write. */
  updatedAt: string;
  figures: ProcessFigures;
}

/** Every process that wrote its figures within the last withinMs, by role then process id. */
export async function freshProcessFigures(db: Queryable, withinMs: number): Promise<ProcessFiguresRow[]> {
  const rows = await db.query<{
    process_id: string;
    role: string;
    host: string;
    pid: number;
    started_at: Date;
    updated_at: Date;
    figures: ProcessFigures;
  }>(
    `SELECT process_id, role, host, pid, started_at, updated_at, figures FROM admin.process_figures
      WHERE updated_at > now() - make_interval(secs => $1::float8) ORDER BY role, process_id`,
    [withinMs / 1000],
  );
  return rows.map((r) => ({
    processId: r.process_id,
    role: r.role,
    host: r.host,
    pid: r.pid,
    startedAt: r.started_at,
    updatedAt: r.updated_at.toISOString(),
    figures: r.figures,
  }));
}
