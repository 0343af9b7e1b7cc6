// The few samples the dashboard reads from the api's GET /metrics (Prometheus
// text format): queue depth per pool and priority. Only plain samples
// `name{label="v",...} value` are read; comments and other names are skipped.

export type Sample = { labels: Record<string, string>; value: number };

export function samples(text: string, name: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== '{' && rest[0] !== ' ') continue;
    let labels: Record<string, string> = {};
    let tail = rest;
    if (rest[0] === '{') {
      const end = rest.indexOf('}');
      if (end < 0) continue;
      labels = parseLabels(rest.slice(1, end));
      tail = rest.slice(end + 1);
    }
    const value = Number(tail.trim().split(/\s+/)[0]);
    if (Number.isFinite(value)) out.push({ labels, value });
  }
  return out;
}

function parseLabels(s: string): Record<string, string> {
  const out: Record<string, string> = {};
  const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (let m = re.exec(s); m; m = re.exec(s)) out[m[1]] = m[2].replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
  return out;
}
