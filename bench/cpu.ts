// CPU time of process trees, read from /proc (Linux): what a run cost each
// part of the system, so that a change which moves work from one server to
// another shows where the work went, even when the machine's two cores are
// the limit for all of them together.
import { execFileSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
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
  let stat: string;
  try {
    stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return 0;
  }
  // Fields after the command name (which may hold spaces): state is the 3rd field of the line.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const [utime, stime, cutime, cstime] = [11, 12, 13, 14].map((i) => Number(fields[i] ?? 0));
  let total = (utime! + stime! + cutime! + cstime!) / clockTicks();
  for (const child of await childPids(pid)) total += await treeCpuSeconds(child);
  return total;
}
