// Settings shared by the generated (property-based) tests. CI runs them with a
// fixed seed, so a run is reproducible and a failure is the same failure on
// every machine; FUZZ_SEED and FUZZ_RUNS widen a local run:
//
//   FUZZ_RUNS=5000 FUZZ_SEED=random npm test
//
// fast-check reports the seed and the path of a failing run; passing them
// back (FUZZ_SEED=<seed>, and fast-check's `path` to replay one case) repeats
// exactly that run.

/** The seed CI uses. Any fixed value works; this one is the day these tests were written. */
const CI_SEED = 20_261_130;

export interface FuzzParameters {
  seed: number;
  numRuns: number;
}

/** The seed and number of runs for a generated test whose CI budget is defaultRuns. */
export function fuzzParameters(defaultRuns: number): FuzzParameters {
  const rawSeed = process.env.FUZZ_SEED;
  const seed =
    rawSeed === undefined || rawSeed === ''
      ? CI_SEED
      : rawSeed === 'random'
        ? Math.floor(Math.random() * 2 ** 31)
        : Number(rawSeed);
  if (!Number.isSafeInteger(seed)) throw new Error(`FUZZ_SEED must be an integer or "random", got "${rawSeed}"`);
  const rawRuns = process.env.FUZZ_RUNS;
  const numRuns = rawRuns === undefined || rawRuns === '' ? defaultRuns : Number(rawRuns);
  if (!Number.isSafeInteger(numRuns) || numRuns < 1)
    throw new Error(`FUZZ_RUNS must be a positive integer, got "${rawRuns}"`);
  if (rawSeed === 'random') console.log(`fuzz: FUZZ_SEED=${seed}`);
  return { seed, numRuns };
}
