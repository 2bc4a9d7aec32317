import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { acceptTimeOf, newOrderId, ORDER_ID_PATTERN } from './ids.ts';

describe('acceptTimeOf', () => {
  it('reads back the millisecond time newOrderId wrote', () => {
    for (const time of [0, 1, 1_700_000_000_123, Date.now(), 2 ** 48 - 1])
      assert.equal(acceptTimeOf(newOrderId(time)), time);
  });

  it('is undefined for strings that are not order ids', () => {
    for (const id of [
      '',
      'ord_',
      'prd_01M8ATWWD9YJEQ51WDS1D0RG3W',
      'ord_01M8ATWWD9YJEQ51WDS1D0RG3',
      'ord_01M8ATWWUIYJEQ51WDS1D0RG3W',
    ]) {
      assert.equal(acceptTimeOf(id), undefined, id);
    }
  });
});

describe('newOrderId', () => {
  it('gives ids of the pattern that differ in their random part, across several refills of its random pool', () => {
    const ids = Array.from({ length: 1_000 }, () => newOrderId(1_700_000_000_123));
    for (const id of ids) assert.match(id, new RegExp(ORDER_ID_PATTERN));
    assert.equal(new Set(ids).size, ids.length);
  });
});
