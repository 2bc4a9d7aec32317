import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { backoffMs } from './backoff.ts';

describe('backoffMs', () => {
  const policy = { baseMs: 100, maxMs: 1_000 };

  it('doubles the step per attempt up to the maximum, waiting between half and all of it', () => {
    const steps = [100, 200, 400, 800, 1_000, 1_000];
    steps.forEach((step, i) => {
      assert.equal(
        backoffMs(i + 1, policy, () => 0),
        step / 2,
        `attempt ${i + 1}, least`,
      );
      assert.equal(
        backoffMs(i + 1, policy, () => 1),
        step,
        `attempt ${i + 1}, most`,
      );
    });
  });

  it('stays finite for any attempt count', () => {
    assert.equal(
      backoffMs(10_000, policy, () => 1),
      1_000,
    );
    assert.equal(
      backoffMs(0, policy, () => 1),
      100,
    );
  });
});
