// CPU time of process trees, read from /proc (Linux): what a run cost each
// part of the system, so that a change which moves work from one server to
// another shows where the work went, even when the machine's two cores are
// the limit for all of them together.
import { execFileSync } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { childPids } from '../scripts/cluster.ts';

let ticksPerSecond: number | undefined;

function clockTicks(): number {
  if (ticksPerSecond === undefined) {
    try {
      ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticksPerSecond = 100; // USER_HZ on every mainstream Linux build
    }
  }
  return ticksPerSecond;
}

/**
 * CPU seconds (user + system) a process and all its descendants have used,
 * those alive now and those it has already reaped. Zero for a process that is
 * gone (or on a system without /proc).
 */
export async function treeCpuSeconds(pid: number): Promise<number> {
  const fields = await statFields(pid);
  if (!fields) return 0;
  const [utime, stime, cutime, cstime] = [11, 12, 13, 14].map((i) => Number(fields[i] ?? 0));
  let total = (utime! + stime! + cutime! + cstime!) / clockTicks();
  for (const child of await childPids(pid)) total += await treeCpuSeconds(child);
  return total;
}

/**
 * CPU seconds (user + system, all threads) one process has used, without its
 * children. Undefined when the process is gone.
 */
export async function processCpuSeconds(pid: number): Promise<number | undefined> {
  const fields = await statFields(pid);
  return fields ? (Number(fields[11] ?? 0) + Number(fields[12] ?? 0)) / clockTicks() : undefined;
}

/** /proc/<pid>/stat's fields after the command name (which may hold spaces): state first. */
async function statFields(pid: number): Promise<string[] | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** The processes whose program name (/proc/<pid>/comm) is `name`: e.g. the machine's nats-server. */
export async function pidsNamed(name: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry)) continue;
    const comm = await readFile(`/proc/${entry}/comm`, 'utf8').catch(() => '');
    if (comm.trim() === name) pids.push(Number(entry));
  }
  return pids;
}

/** A group of processes whose CPU is reported together (a role, "PostgreSQL backends", "load generator"). */
export interface CpuPart {
  name: string;
  pids: number[];
}

/** CPU seconds of each process of each part at one moment, by part name and pid. */
export type CpuSnapshot = Map<string, Map<number, number>>;

export async function cpuSnapshot(parts: readonly CpuPart[]): Promise<CpuSnapshot> {
  const snapshot: CpuSnapshot = new Map();
  for (const part of parts) {
    const byPid = snapshot.get(part.name) ?? new Map<number, number>();
    for (const pid of part.pids) {
      const seconds = await processCpuSeconds(pid);
      if (seconds !== undefined) byPid.set(pid, seconds);
    }
    snapshot.set(part.name, byPid);
  }
  return snapshot;
}

/**
 * CPU seconds each part used between two snapshots. A process seen only in
 * the later one started in between and counts from zero; one seen only in
 * the earlier one exited in between, and what it used after the first
 * snapshot is lost (the parts measured here keep their processes for a run).
 */
export function cpuBetween(before: CpuSnapshot, after: CpuSnapshot): Map<string, number> {
  const used = new Map<string, number>();
  for (const [name, byPid] of after) {
    let seconds = 0;
    for (const [pid, now] of byPid) seconds += now - (before.get(name)?.get(pid) ?? 0);
    used.set(name, seconds);
  }
  return used;
}
