// Progress on stderr, so stdout keeps only the table. A terminal gets one
// line redrawn in place; a log file or CI gets a plain line every few seconds.
export class Progress {
  readonly #label: string;
  readonly #totalS: number;
  readonly #tty = process.stderr.isTTY === true;
  #lastPlain = -Infinity;
  #drawn = false;

  constructor(label: string, totalS: number) {
    this.#label = label;
    this.#totalS = totalS;
  }

  update(elapsedS: number, perSecond: number, extra = ''): void {
    const rate = `${Math.round(perSecond).toLocaleString('en-US')} orders/s`;
    const time = `${Math.min(elapsedS, this.#totalS).toFixed(0)}/${this.#totalS} s`;
    if (this.#tty) {
      const width = 24;
      const filled = Math.round((Math.min(elapsedS, this.#totalS) / this.#totalS) * width);
      const bar = '█'.repeat(filled) + '░'.repeat(width - filled);
      process.stderr.write(`\r\x1b[2K${this.#label} ${bar} ${time}  ${rate}${extra ? `  ${extra}` : ''}`);
      this.#drawn = true;
    } else if (elapsedS - this.#lastPlain >= 5 || elapsedS >= this.#totalS) {
      this.#lastPlain = elapsedS;
      process.stderr.write(`${this.#label}: ${time}, ${rate}${extra ? `, ${extra}` : ''}\n`);
    }
  }

  done(): void {
    if (this.#drawn) process.stderr.write('\n');
    this.#drawn = false;
  }
}

/** A one-off status line ("starting the cluster…"), kept out of stdout. */
export function say(message: string): void {
  process.stderr.write(`${message}\n`);
}
