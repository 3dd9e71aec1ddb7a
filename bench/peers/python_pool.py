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

Usage: python_pool.py [--quick]
"""
import concurrent.futures as cf
import json
import math
import multiprocessing as mp
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


def main():
    quick = "--quick" in sys.argv
    out = {"python_version": platform.python_version()}
    out.update(measure_pool(mp.get_context("spawn"), Sizes(quick, added=False)))
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
