import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { storableText, TEXT_CHARACTER } from './text.ts';

describe('text', () => {
  const line = new RegExp(`^${TEXT_CHARACTER}*$`, 'u');

  it('allows any character but controls and lone surrogate halves; a surrogate pair is one character', () => {
    for (const ok of ['Coffee mug', 'Tasse ☕', '😀', '茶碗', 'é', '\u00a0', '\ufeff', 'a b'])
      assert.ok(line.test(ok), JSON.stringify(ok));
    for (const bad of [
      '\u0000',
      'a\u0001',
      '\n',
      '\t',
      '\r',
      '\u001f',
      '\u007f',
      '\u0085',
      '\u009f',
      '\ud800',
      'x\udfff',
      '\udc00\ud800',
    ])
      assert.ok(!line.test(bad), JSON.stringify(bad));
  });

  it('storableText replaces what text may not hold, and keeps everything else', () => {
    assert.equal(storableText('a\u0000b\nc\ud800d😀e\u0085f é'), 'a\ufffdb\ufffdc\ufffdd😀e\ufffdf é');
    assert.ok(line.test(storableText('\u0000\ud800\n')));
  });
});
