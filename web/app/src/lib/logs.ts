// The job page's log view: which lines it renders, in blocks.

/** Lines per block of the log view. A block is keyed by its first line and
 *  does not re-render once full, so a frame that appends lines diffs a few
 *  blocks instead of every line on screen. */
const BLOCK = 100;

/** Cuts the shown lines into blocks aligned on sequence numbers (not on the
 *  window's start), so a full block is the same array of lines frame after
 *  frame until it scrolls out. */
export function toBlocks<L extends { seq: number }>(lines: L[]): L[][] {
  const out: L[][] = [];
  for (const l of lines) {
    const last = out[out.length - 1];
    if (last && Math.floor(last[0].seq / BLOCK) === Math.floor(l.seq / BLOCK)) last.push(l);
    else out.push([l]);
  }
  return out;
}

