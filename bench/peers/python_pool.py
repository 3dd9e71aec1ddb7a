#!/usr/bin/env python3
"""Python's process pools on procpool's bench workloads. Prints one JSON
object; the Rust harness runs it and compares.

Peers, each on workloads a-d:
- multiprocessing.Pool, spawn start method: keys without a prefix;
- multiprocessing.Pool, fork and forkserver: keys prefixed "fork_" and
  "forkserver_";
- concurrent.futures.ProcessPoolExecutor, Python's default start method
  (named by "executor_start_method"): keys prefixed "executor_". It has no
  apply and no imap_unordered: a is submit().result(), b too, c is its map
  with Pool.map's default chunk size, d its (ordered) map with chunksize=1.

The added peers run d over fewer items than the spawn Pool (20,000 against
200,000): a rate, not a total, is compared.

The spawn Pool also runs row k: Pool.apply with the calling thread and its
one worker pinned to the same CPU, then to different CPUs (keys
"placed_same_apply_p50_s", "placed_different_apply_p50_s").

With --serve-map N it runs rows a, c and d in turns with the harness
instead: a spawn Pool(2) answers each line "map" on stdin with one
Pool.map of x*x over N items, printing its rate (items/s), each line
"imap M" with one imap_unordered of x*x over M items with chunksize=1,
printing its rate, and each line "startup" with the start-up of a new
spawn Pool(2) and its first result, printing the seconds, so the harness
can take its own rounds and Python's in turns, seconds apart, on a machine
whose speed drifts over minutes.

Usage: python_pool.py [--quick] | python_pool.py --serve-map N
"""
import concurrent.futures as cf
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time


def square(x):
    return x * x


def spin(iters):
    # About as much work per item as the Rust harness's spin(); calibrated
    # by the harness, which passes the iteration count for ~10 ms.
    acc = 0
    for i in range(iters):
        acc = (acc * 31 + i) & 0xFFFFFFFF
    return acc


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


WORKERS = 2


class Sizes:
    def __init__(self, quick, added):
        self.startups = 2 if quick else 5
        self.applies = 200 if quick else 5000
        self.placed_applies = 100 if quick else 1000
        self.map_items = 20_000 if quick else 1_000_000
        if quick:
            self.imap_items = 2_000
        else:
            self.imap_items = 20_000 if added else 200_000


def default_chunksize(n):
    # What Pool.map picks: ceil(n / (4 * workers)).
    return math.ceil(n / (4 * WORKERS))


def measure_pool(ctx, sizes):
    out = {}
    # a. start-up: Pool(2) and the first result back.
    runs = []
    for _ in range(sizes.startups):
        t = time.perf_counter()
        with ctx.Pool(WORKERS) as pool:
            pool.apply(square, (3,))
            runs.append(time.perf_counter() - t)
    out["startup_s"] = median(runs)

    with ctx.Pool(WORKERS) as pool:
        pool.apply(square, (1,))
        # b. apply round trips.
        lat = []
        for i in range(sizes.applies):
            t = time.perf_counter()
            pool.apply(square, (i,))
            lat.append(time.perf_counter() - t)
        out["apply_p50_s"] = median(lat)
        out["apply_p99_s"] = pct(lat, 0.99)

        # c. map of x*x, default chunk size (median of 3).
        n = sizes.map_items
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            r = pool.map(square, range(n))
            rates.append(n / (time.perf_counter() - t))
            assert r[-1] == (n - 1) ** 2
        out["map_items_per_s"] = median(rates)

        # d. imap_unordered, chunk size 1 (median of 3).
        n = sizes.imap_items
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            count = sum(1 for _ in pool.imap_unordered(square, range(n), chunksize=1))
            rates.append(n / (time.perf_counter() - t))
            assert count == n
        out["imap_unordered_items_per_s"] = median(rates)
    return out


def measure_placement(ctx, sizes):
    """k. Pool.apply on a pool of one worker, the calling thread and the
    worker pinned to the same CPU, then to different CPUs (as the harness
    pins its own caller and worker): 3 rounds alternating the placements,
    medians. Python's own helper threads stay unpinned, as the harness's
    dispatcher does. Empty with fewer than two CPUs allowed."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return {}
    placements = [("same", allowed[0], allowed[0]), ("different", allowed[0], allowed[1])]
    lat = {name: [] for name, _, _ in placements}
    with ctx.Pool(1) as pool:
        worker = pool.apply(os.getpid)
        for _ in range(3):
            for name, caller, other in placements:
                os.sched_setaffinity(worker, {other})
                # pid 0: the calling thread only (Linux).
                os.sched_setaffinity(0, {caller})
                for i in range(50):
                    pool.apply(square, (i,))
                for i in range(sizes.placed_applies):
                    t = time.perf_counter()
                    pool.apply(square, (i,))
                    lat[name].append(time.perf_counter() - t)
                os.sched_setaffinity(0, allowed)
        assert pool.apply(os.getpid) == worker, "the worker was replaced"
    out = {f"placed_{name}_apply_p50_s": median(xs) for name, xs in lat.items()}
    out["placed_cpus"] = [allowed[0], allowed[1]]
    return out


def measure_executor(sizes):
    out = {}
    # a. start-up: the executor and the first result back.
    runs = []
    for _ in range(sizes.startups):
        t = time.perf_counter()
        with cf.ProcessPoolExecutor(WORKERS) as ex:
            ex.submit(square, 3).result()
            runs.append(time.perf_counter() - t)
    out["startup_s"] = median(runs)

    with cf.ProcessPoolExecutor(WORKERS) as ex:
        ex.submit(square, 1).result()
        # b. submit().result() round trips.
        lat = []
        for i in range(sizes.applies):
            t = time.perf_counter()
            ex.submit(square, i).result()
            lat.append(time.perf_counter() - t)
        out["apply_p50_s"] = median(lat)
        out["apply_p99_s"] = pct(lat, 0.99)

        # c. map with Pool.map's default chunk size (median of 3).
        n = sizes.map_items
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            r = list(ex.map(square, range(n), chunksize=default_chunksize(n)))
            rates.append(n / (time.perf_counter() - t))
            assert r[-1] == (n - 1) ** 2
        out["map_items_per_s"] = median(rates)

        # d. map with chunksize=1 (ordered; median of 3).
        n = sizes.imap_items
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            count = sum(1 for _ in ex.map(square, range(n), chunksize=1))
            rates.append(n / (time.perf_counter() - t))
            assert count == n
        out["imap_unordered_items_per_s"] = median(rates)
    return out


def serve_map(n):
    """Rows a and c in turns with the harness (see the module docs)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(WORKERS) as pool:
        pool.map(square, range(1000))
        print("ready", flush=True)
        for line in sys.stdin:
            words = line.split()
            if words[:1] == ["imap"]:
                m = int(words[1])
                t = time.perf_counter()
                count = sum(1 for _ in pool.imap_unordered(square, range(m), chunksize=1))
                rate = m / (time.perf_counter() - t)
                assert count == m
                print(rate, flush=True)
                continue
            if line.strip() == "startup":
                t = time.perf_counter()
                with ctx.Pool(WORKERS) as fresh:
                    fresh.apply(square, (3,))
                    took = time.perf_counter() - t
                print(took, flush=True)
                continue
            t = time.perf_counter()
            r = pool.map(square, range(n))
            rate = n / (time.perf_counter() - t)
            assert r[-1] == (n - 1) ** 2
            print(rate, flush=True)


def main():
    if "--serve-map" in sys.argv:
        serve_map(int(sys.argv[sys.argv.index("--serve-map") + 1]))
        return
    quick = "--quick" in sys.argv
    out = {"python_version": platform.python_version()}
    out.update(measure_pool(mp.get_context("spawn"), Sizes(quick, added=False)))
    out.update(measure_placement(mp.get_context("spawn"), Sizes(quick, added=False)))
    added = Sizes(quick, added=True)
    for method in ("fork", "forkserver"):
        for k, v in measure_pool(mp.get_context(method), added).items():
            out[f"{method}_{k}"] = v
    out["executor_start_method"] = mp.get_start_method()
    for k, v in measure_executor(added).items():
        out[f"executor_{k}"] = v
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
