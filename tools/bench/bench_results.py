"""Results at a lab's scale: what a reader waits for over N job runs' files, before and after
`dplbench results compact`, on a local root and on an S3-compatible server on loopback (moto).

N jobs are written with the project's own writers (`store.write_rows`, `store.write_epochs`: 3 rows
and 10 epochs per job, a real resolved config in each row, 9 methods x 11 base-to-novel datasets),
plus a driver's status file per 1,000 jobs. Then, as a user runs them (the whole command, Python's
start included): `results query "select count(*), avg(accuracy) from results"`, `results ls`,
`report`; `results compact`; the same three again. Beside them, the floor: DuckDB in this process
over one local file holding the same rows. With `--base REV`, the query before compaction also runs
with that commit's code (a `git worktree`), for the speed-up over it. No timing asserts
(docs/benchmarks.md §1).

    .venv/bin/python tools/bench/bench_results.py [--ns 1000,10000] [--stores local,s3]
        [--base b4eb793] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
ENTRY = "import sys; sys.argv[0] = 'dplbench'; import dplbench.cli as c; c.main()"
# base2novel.yaml's
METHODS = ("zsclip", "coop", "cocoop", "kgcoop", "ivlp", "maple", "promptsrc", "clip_lora", "dpl")
LATENCY = ""  # --latency-ms, as the table shows it
QUERY = "select count(*), avg(accuracy) from results"


def cli(src: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(src), "RAY_AUTH_MODE": "disabled"}
    tic = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", ENTRY, *args], capture_output=True, text=True,
                         env=env, cwd=src)  # fmt: skip
    wall = time.perf_counter() - tic
    if out.returncode != 0:
        raise RuntimeError(f"dplbench {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return wall


def write_root(root_path: str, n: int) -> float:
    """N job runs' rows and epochs, and the status files of their driver runs; seconds taken."""
    from dplbench.plan.suites import load_suite
    from dplbench.results import store
    from dplbench.results.root import ResultsRoot
    from dplbench.results.status import StatusBook

    root = ResultsRoot(root_path)
    config = json.dumps(load_suite("smoke", {"methods": ["dpl"]}).jobs[0].describe())
    b2n = load_suite("base2novel", {"methods": ["zsclip"], "seeds": [1]}).jobs
    datasets = list(dict.fromkeys(j.evals[0].dataset for j in b2n))  # the suite's 11
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rng = random.Random(0)

    def job(i: int):
        method, dataset = METHODS[i % 9], datasets[(i // 9) % len(datasets)]
        seed, jid, run = 1 + i // 99, f"{i:016x}", f"run{i // 1000:04d}"
        rows = []
        for subsample, split in (("base", "test"), ("novel", "test"), ("base", "val")):
            r = dict.fromkeys(store.ROW_SCHEMA.names)
            acc = 60 + 30 * rng.random()
            r.update(job_id=jid, run_id=run, suite="base2novel", protocol="base2novel",
                     method=method, dataset=dataset, train_dataset=dataset, subsample=subsample,
                     split=split, shots=16, seed=seed, accuracy=acc, correct=int(acc * 10),
                     total=1000, skipped=0, epochs=10, config=config, params="{}", fused_with="",
                     code_version="bench", versions="{}", hardware="1x cpu", node="n",
                     num_workers=1, train_seconds=60.0, eval_seconds=5.0, wall_seconds=66.0,
                     created_at=t0 + timedelta(seconds=i))  # fmt: skip
            rows.append(r)
        store.write_rows(root, rows)
        epochs = [{"job_id": jid, "run_id": run, "epoch": e, "lr": 0.002, "loss": 1 / (e + 1),
                   "loss_ce": 0.5, "samples": 256, "seconds": 6.0, "val_accuracy": None,
                   "run_status": "done"} for e in range(10)]  # fmt: skip
        store.write_epochs(root, "base2novel", method, epochs)
        return SimpleJob(jid, method, seed, dataset, run)

    tic = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        jobs = list(pool.map(job, range(n)))
    for run in sorted({j.run for j in jobs}):
        mine = [j for j in jobs if j.run == run]
        book = StatusBook(root, "base2novel", run, mine, interval=3600)
        for j in mine:
            book.update(j.id, status="done")
        book.close()
    return time.perf_counter() - tic


class SimpleJob:
    """What StatusBook reads of a job."""

    def __init__(self, jid, method, seed, dataset, run):
        self.id, self.method, self.seed, self.run = jid, method, seed, run
        self.protocol, self.source = "base2novel", None
        self.train = type("T", (), {"dataset": dataset})()


def floor(root_path: str, tmp: Path) -> float:
    """DuckDB over one local file holding the same rows: no files to find, no process to start."""
    import duckdb
    import pyarrow.parquet as pq

    from dplbench.results import store
    from dplbench.results.root import ResultsRoot

    one = tmp / "one.parquet"
    pq.write_table(store.query(ResultsRoot(root_path), "SELECT * FROM rows"), one)
    latest = store.latest_sql(f"read_parquet('{one}')", store.LATEST_KEYS)
    tic = time.perf_counter()
    duckdb.connect().sql(f"select count(*), avg(accuracy) from ({latest})").fetchall()
    return time.perf_counter() - tic


def measure(n: int, where: str, tmp: Path, base: Path | None) -> list[dict]:
    write_s = write_root(where, n)
    res = ["--results", where]
    out = tmp / f"report-{n}"
    kind = "local"
    if where.startswith("s3://"):
        kind = f"s3 (moto{', +' + LATENCY + ' ms' if LATENCY else ''})"
    row = {"N": n, "store": kind, "write s": write_s}
    if base is not None:
        row["query base s"] = cli(base, ["results", "query", QUERY, *res])
    row["query s"] = cli(ROOT, ["results", "query", QUERY, *res])
    row["ls s"] = cli(ROOT, ["results", "ls", *res])
    row["report s"] = cli(ROOT, ["report", *res, "--out", str(out), "--no-compare"])
    row["compact s"] = cli(ROOT, ["results", "compact", *res])
    row["query after s"] = cli(ROOT, ["results", "query", QUERY, *res])
    row["ls after s"] = cli(ROOT, ["results", "ls", *res])
    row["report after s"] = cli(ROOT, ["report", *res, "--out", str(out), "--no-compare"])
    row["floor s"] = floor(where, tmp)
    return [row]


def print_row(row: dict, header: bool) -> None:
    cols = list(row)
    if header:
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
    cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()]
    print("| " + " | ".join(cells) + " |", flush=True)


def moto(latency_ms: float) -> str:
    """moto on loopback; with a latency, behind a proxy that holds each request that long first
    (a real object store answers in tens of milliseconds, many requests at once; moto answers
    at once, one request at a time)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    if latency_ms > 0:
        host, port = delaying_proxy(host, port, latency_ms / 1000)
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": f"http://{host}:{port}"})  # fmt: skip
    return f"http://{host}:{port}"


def delaying_proxy(host: str, port: int, delay: float) -> tuple[str, int]:
    """An HTTP proxy on loopback that sleeps `delay` before forwarding each request."""
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _body(self) -> bytes:
            if "chunked" not in (self.headers.get("Transfer-Encoding") or ""):
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            out = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass  # trailers
            return out

        def _any(self):
            body = self._body()
            time.sleep(delay)
            conn = http.client.HTTPConnection(host, port)
            skip = ("transfer-encoding", "expect", "content-length")
            headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
            conn.request(self.command, self.path, body, headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            length = resp.getheader("Content-Length") if self.command == "HEAD" else len(data)
            self.send_header("Content-Length", str(length or 0))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    proxy.daemon_threads = True
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    return proxy.server_address


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", default="1000,10000")
    ap.add_argument("--stores", default="local,s3")
    ap.add_argument("--base", default=None, help="a commit to time the query before compaction")
    ap.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="s3: hold each request this long (a proxy in front of moto)",
    )
    args = ap.parse_args()
    import logging

    logging.disable(logging.WARNING)
    stores = args.stores.split(",")
    global LATENCY
    LATENCY = f"{args.latency_ms:g}" if args.latency_ms else ""
    if "s3" in stores:
        moto(args.latency_ms)
    with tempfile.TemporaryDirectory(prefix="bench-results-") as tmp:
        tmp = Path(tmp)
        base = None
        if args.base:
            base = tmp / "base"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach",
                            str(base), args.base], check=True)  # fmt: skip
        try:
            header = True
            for n in (int(x) for x in args.ns.split(",")):
                for kind in stores:
                    if kind == "s3":
                        import boto3

                        bucket = f"bench-{n}"
                        boto3.client("s3").create_bucket(Bucket=bucket)
                        where = f"s3://{bucket}/results"
                    else:
                        where = str(tmp / f"local-{n}")
                    for row in measure(n, where, tmp, base):
                        print_row(row, header)
                        header = False
        finally:
            if base is not None:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(base)], check=False)  # fmt: skip


if __name__ == "__main__":
    main()
