#!/usr/bin/env python3
"""Draws copy time and peak RSS against size, for this tool and pgloader, from bench_copy.sh's CSV.

    python3 scripts/plot_bench.py [RESULTS.csv ...] [--out docs/bench-copy.png]

With no file, reads every $BENCH_DATA/results-*.csv (default target/bench-data); a later run's figure for the same
size and step replaces an earlier one. matplotlib is installed with pip when missing.
"""
import argparse
import csv
import glob
import os
import subprocess
import sys

try:
    import matplotlib
except ImportError:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "matplotlib"])
    import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SERIES = [
    ("copy", "interview-store copy", "tab:blue", "o"),
    ("pgloader", "pgloader (data only, tuned)", "tab:red", "s"),
    ("floor_binary_copy", "PostgreSQL binary COPY (floor)", "tab:gray", "^"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="*")
    ap.add_argument("--out", default="docs/bench-copy.png")
    args = ap.parse_args()
    data = os.environ.get("BENCH_DATA", "target/bench-data")
    files = args.files or sorted(glob.glob(os.path.join(data, "results-*.csv")))
    if not files:
        sys.exit("no results: run scripts/bench_copy.sh first")
    figures = {}  # (step, sessions) -> (wall_s, rss_mb)
    for f in files:
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                if row["ok"] != "1":
                    continue
                figures[(row["step"], int(row["sessions"]))] = (
                    float(row["wall_s"]),
                    float(row["rss_mb"]),
                )
    fig, (t_ax, m_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for step, label, color, marker in SERIES:
        points = sorted((n, w, r) for (s, n), (w, r) in figures.items() if s == step)
        if not points:
            continue
        ns = [p[0] for p in points]
        t_ax.plot(ns, [p[1] for p in points], marker=marker, color=color, label=label)
        for n, w, _ in points:
            t_ax.annotate(f"{w:.1f} s", (n, w), textcoords="offset points", xytext=(4, -10), fontsize=7)
        if step != "floor_binary_copy":  # the floor is psql's, not a migration tool's memory
            m_ax.plot(ns, [p[2] for p in points], marker=marker, color=color, label=label)
            for n, _, r in points:
                m_ax.annotate(f"{r:.0f} MB", (n, r), textcoords="offset points", xytext=(4, -10), fontsize=7)
    for ax, title, unit in [
        (t_ax, "Copy time", "wall time, s"),
        (m_ax, "Peak RSS of the copying process", "peak RSS, MB"),
    ]:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sessions (40 messages, 2 drafts each)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("SQLite to PostgreSQL, one run of scripts/bench_copy.sh, 2 cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} from {len(files)} file(s)")


if __name__ == "__main__":
    main()
