// What the figures were measured on: throughput means little without it.
import { cpus, totalmem } from 'node:os';
import postgres from 'postgres';

export interface Machine {
  cpu: string;
  cores: number;
  ramGiB: number;
  node: string;
  postgres: string | undefined;
  platform: string;
}

export async function describeMachine(postgresUrl: string | undefined): Promise<Machine> {
  let version: string | undefined;
  if (postgresUrl !== undefined) {
    const sql = postgres(postgresUrl, { max: 1, onnotice: () => {}, connect_timeout: 5 });
    try {
      const [row] = await sql<{ server_version: string }[]>`SHOW server_version`;
      version = row?.server_version;
    } catch {
      version = 'unreachable';
    } finally {
      await sql.end();
    }
  }
  return {
    cpu: cpus()[0]?.model.trim() ?? 'unknown',
    cores: cpus().length,
    ramGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    postgres: version,
    platform: `${process.platform} ${process.arch}`,
  };
}
