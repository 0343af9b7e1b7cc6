#!/usr/bin/env python3
"""Where the slow starts of a queue-to-start phase fell, next to what each
process spent on the CPU at that moment (BENCHMARKS.md, fourteenth session).

  latency-timeline.py sample OUT.csv SECONDS
      Every 50 ms, the on-CPU time (ns, summed over threads, from
      /proc/PID/task/TID/schedstat) of every fetchml, nats-server, postgres
      and bench process, and the machine's idle and stolen time (/proc/stat,
      in clock ticks), as `unix time,name,pid,ns` lines.
  latency-timeline.py align Q2S.csv CPU.csv
      Per 100 ms of the phase (by queue time): p50/max queue-to-start (ms)
      and the CPU (ms) each kind of process used in those 100 ms.

Q2S.csv is a phase's file from `bench --latency-dump DIR`. The sampler costs
a few percent of one core itself. A window where every process got less CPU
at once is the host's if its steal rose, the sampler's or another process's
if its idle did not; idle and steal are in clock ticks (10 ms), coarse per
window.
"""
import collections
import os
import sys
import time


def kind_of(pid):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        comm = open(f"/proc/{pid}/comm").read().strip()
    except OSError:
        return None
    exe = os.path.basename(argv[0].decode(errors="replace"))
    if exe == "nice" and len(argv) > 4:  # the bench's projector apart: nice -n 10 fetchml projector
        argv = argv[3:]
        exe = os.path.basename(argv[0].decode(errors="replace"))
    if exe.startswith("fetchml"):
        return "fetchml " + (argv[1].decode(errors="replace") if len(argv) > 1 else "")
    if exe.startswith("postgres") or comm == "postgres":
        return "postgres"
    if comm in ("nats-server", "bench"):
        return comm
    return None


def sample(out_path, seconds):
    kinds = {}
    tick_ns = 1e9 / os.sysconf("SC_CLK_TCK")
    end = time.time() + seconds
    with open(out_path, "w") as out:
        while time.time() < end:
            t = time.time()
            # The machine's idle and stolen time (ticks, as ns): a window where
            # every process got less at once, with steal up, is the host's.
            fields = open("/proc/stat").readline().split()[1:]
            out.write(f"{t:.3f},machine idle,0,{int(int(fields[3]) * tick_ns)}\n")
            out.write(f"{t:.3f},machine steal,0,{int(int(fields[7]) * tick_ns)}\n")
            for pid in filter(str.isdigit, os.listdir("/proc")):
                if pid not in kinds:
                    kinds[pid] = kind_of(pid)
                if not kinds[pid]:
                    continue
                try:
                    ns = sum(int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
                             for tid in os.listdir(f"/proc/{pid}/task"))
                except OSError:
                    continue
                out.write(f"{t:.3f},{kinds[pid]},{pid},{ns}\n")
            time.sleep(max(0.0, 0.05 - (time.time() - t)))


def align(q2s_path, cpu_path):
    jobs = sorted(tuple(map(float, line.split(","))) for line in open(q2s_path))
    t0 = jobs[0][0] / 1e6
    latency = collections.defaultdict(list)
    for queued_us, ms in jobs:
        latency[int((queued_us / 1e6 - t0) * 10)].append(ms)
    series = collections.defaultdict(list)
    for line in open(cpu_path):
        t, kind, pid, ns = line.strip().split(",")
        series[(kind, pid)].append((float(t), int(ns)))
    cpu = collections.defaultdict(collections.Counter)
    for (kind, _), points in series.items():
        for (ta, a), (tb, b) in zip(points, points[1:]):
            # Spread each interval's time over the windows it overlaps: the
            # sampler's own delays would otherwise empty one window and
            # double the next.
            if tb <= ta:
                continue
            w = int((ta - t0) * 10 // 1)
            while t0 + w / 10 < tb:
                lo, hi = max(ta, t0 + w / 10), min(tb, t0 + (w + 1) / 10)
                if hi > lo:
                    cpu[w][kind] += (b - a) / 1e6 * (hi - lo) / (tb - ta)
                w += 1
    kinds = sorted({k for c in cpu.values() for k in c})
    procs = [k for k in kinds if not k.startswith("machine")]
    print("at (s)  p50/max ms  " + " ".join(f"{k[:16]:>16}" for k in kinds) + "   processes (ms CPU per 100 ms)")
    for w in sorted(latency):
        v = sorted(latency[w])
        c = cpu.get(w, {})
        print(f"{w / 10:6.1f}  {v[len(v) // 2]:4.0f}/{v[-1]:4.0f}   "
              + " ".join(f"{c.get(k, 0):16.1f}" for k in kinds) + f"   {sum(c.get(k, 0) for k in procs):6.1f}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "sample":
        sample(sys.argv[2], float(sys.argv[3]))
    elif len(sys.argv) == 4 and sys.argv[1] == "align":
        align(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
