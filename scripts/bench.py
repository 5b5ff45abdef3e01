#!/usr/bin/env python3
"""refugio's throughput, memory and restore benchmark (issue 13).

Run through scripts/bench, which installs what it needs, builds the release
binary and starts the S3 services. Every baseline runs in the same
invocation as refugio, rounds interleaved, so that the ratios compare runs
that saw the same (shared, noisy) machine; the table shows the best wall
time of the rounds. Nothing here asserts: the targets are printed with
their figures, for a person to read.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

PGBIN = "/opt/refugio-test/pg/16/bin"
ROWS_PER_GB = 1_350_000  # trips rows per GB of database (pg_database_size)
MIB = 1024 * 1024


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args):
        self.args = args
        self.refugio = args.refugio
        self.work = tempfile.mkdtemp(prefix="refugio-bench-", dir=args.work_dir)
        self.as_pg = []
        if os.getuid() == 0:
            os.chown(self.work, 65534, 65534)
            self.as_pg = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        self.server = None
        self.results = {}  # label -> list of (wall, user+sys, rss_kib, stored, extra)
        self.order = []

    # -- the server and the data -------------------------------------------
    def start_server(self):
        data = os.path.join(self.work, "data")
        subprocess.run(self.as_pg + [f"{PGBIN}/initdb", "-D", data, "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--no-locale"],
                       check=True, stdout=subprocess.DEVNULL, cwd=self.work)
        self.server = subprocess.Popen(
            self.as_pg + [f"{PGBIN}/postgres", "-D", data, "-c", "listen_addresses=",
                          "-c", f"unix_socket_directories={self.work}", "-c", "fsync=off",
                          "-c", "max_wal_size=8GB", "-c", "shared_buffers=256MB",
                          "-c", "maintenance_work_mem=256MB"],
            stdout=open(os.path.join(self.work, "server.log"), "w"), stderr=subprocess.STDOUT,
            cwd=self.work)
        for _ in range(100):
            if subprocess.run([f"{PGBIN}/pg_isready", "-q", "-h", self.work]).returncode == 0:
                return
            time.sleep(0.1)
        sys.exit("bench: the server did not start; see " + self.work + "/server.log")

    def url(self, db):
        return f"postgres://postgres@localhost:5432/{db}?host={self.work}"

    def psql(self, db, sql, *extra):
        out = subprocess.run([f"{PGBIN}/psql", "-X", "-q", "-At", "-h", self.work, "-U", "postgres",
                              "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql, *extra],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def load(self):
        rows = int(ROWS_PER_GB * self.args.size_gb)
        self.psql("postgres", "CREATE DATABASE bench")
        log(f"loading the dataset: {rows:,} trips (about {self.args.size_gb:g} GB), deterministic")
        t0 = time.monotonic()
        subprocess.run([f"{PGBIN}/psql", "-X", "-q", "-h", self.work, "-U", "postgres", "-d", "bench",
                        "-v", f"rows={rows}", "-f", os.path.join(self.args.root, "scripts/bench-data.sql")],
                       check=True, stdout=subprocess.DEVNULL)
        size = int(self.psql("bench", "SELECT pg_database_size('bench')"))
        self.db_size = size
        log(f"dataset loaded in {time.monotonic() - t0:.0f} s: {size / MIB:,.0f} MiB database")
        self.checksum = self.psql("bench", "SELECT md5(string_agg(md5(t::text), '' ORDER BY id)) FROM trips t")

    # -- measuring ---------------------------------------------------------
    def server_cpu(self, kind):
        """The S3 server's own CPU seconds so far (user+sys), or None."""
        try:
            pid = open(os.path.join(self.args.root, ".test-services", f"{kind}.pid")).read().strip()
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def run(self, label, cmd, env=None, stored=None, shell=False, server=None):
        """Runs cmd once; records wall, CPU (user+sys of the whole tree),
        peak RSS (the largest process of the tree) and, for a store, the
        CPU its server spent meanwhile (it shares the machine's cores)."""
        server_before = self.server_cpu(server) if server else None
        full_env = dict(os.environ, PATH=f"{PGBIN}:{os.environ['PATH']}")
        full_env.update(env or {})
        logname = os.path.join(self.work, "log." + "".join(c if c.isalnum() else "_" for c in label))
        errlog = open(logname, "w")
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, shell=shell, env=full_env, stdout=subprocess.PIPE, stderr=errlog,
                                executable="/bin/bash" if shell else None)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            errlog.close()
            sys.stderr.write(open(logname).read())
            sys.exit(f"bench: {label} failed with exit {proc.returncode}")
        cpu = usage.ru_utime + usage.ru_stime
        server_after = self.server_cpu(server) if server else None
        server_cpu = server_after - server_before if server_before is not None and server_after is not None else None
        size = stored(out) if stored else None
        if label not in self.results:
            self.results[label] = []
            self.order.append(label)
        self.results[label].append(dict(wall=wall, cpu=cpu, user=usage.ru_utime, sys=usage.ru_stime,
                                        rss=usage.ru_maxrss, stored=size, out=out, server=server_cpu))
        log(f"{label}: {wall:.2f} s wall, {usage.ru_utime:.2f} s user + {usage.ru_stime:.2f} s sys, "
            f"peak RSS {usage.ru_maxrss / 1024:.0f} MiB"
            + (f", store server {server_cpu:.2f} s CPU" if server_cpu is not None else ""))
        return out

    def best(self, label):
        return min(self.results[label], key=lambda r: r["wall"])

    # -- the pipelines -----------------------------------------------------
    def repo_config(self, name, url, extra_repo="", env_job=""):
        path = os.path.join(self.work, f"{name}.toml")
        with open(path, "w") as f:
            f.write(f'[repository]\nurl = "{url}"\n{extra_repo}\n')
            f.write(f'[[jobs]]\nname = "bench"\nsource = "{self.url("bench")}"\npg_bindir = "{PGBIN}"\n'
                    f'globals = false\nscratch = "{self.url("postgres")}"\n'
                    f'checks = ["SELECT count(*) > 0 FROM trips"]\n{env_job}')
        return path

    def setup_configs(self):
        self.configs = {"dir": self.repo_config("dir", f"file://{self.work}/repo-dir"),
                        "archive": self.repo_config("archive", f"file://{self.work}/repo-archive",
                                                    env_job="archive_compression = true\n")}
        subprocess.run(["age-keygen", "-o", f"{self.work}/identity.txt"], check=True, capture_output=True)
        recipient = subprocess.run(["age-keygen", "-y", f"{self.work}/identity.txt"], check=True,
                                   capture_output=True, text=True).stdout.strip()
        self.configs["age"] = self.repo_config(
            "age", f"file://{self.work}/repo-age",
            f'[repository.encryption]\nrecipients = ["{recipient}"]\nidentity_file = "{self.work}/identity.txt"\n')
        self.s3_env = {}
        for kind in ("garage", "moto"):
            endpoint = os.environ.get(f"REFUGIO_TEST_{kind.upper()}_ENDPOINT")
            if not endpoint:
                continue
            bucket = os.environ[f"REFUGIO_TEST_{kind.upper()}_BUCKET"]
            region = os.environ[f"REFUGIO_TEST_{kind.upper()}_REGION"]
            self.configs[kind] = self.repo_config(
                kind, f"s3://{bucket}/bench-{os.getpid()}",
                f'endpoint = "{endpoint}"\nregion = "{region}"\nforce_path_style = true\n')
            self.s3_env[kind] = {
                "AWS_ACCESS_KEY_ID": os.environ[f"REFUGIO_TEST_{kind.upper()}_ACCESS_KEY"],
                "AWS_SECRET_ACCESS_KEY": os.environ[f"REFUGIO_TEST_{kind.upper()}_SECRET_KEY"],
                "AWS_EC2_METADATA_DISABLED": "true",
            }

    def stored_of_manifest(self, out):
        m = json.loads(out)
        return sum(a["stored_size"] for a in m["artifacts"])

    def file_size(self, path):
        return lambda _out: os.path.getsize(path)

    def pg(self, *args):
        return " ".join([f"{PGBIN}/pg_dump", "-h", self.work, "-U", "postgres", *args, "bench"])

    def backup_round(self, first):
        w = self.work
        self.run("pg_dump -Fc -Z0 > /dev/null", self.pg("-Fc", "-Z0") + " > /dev/null", shell=True)
        self.run("pg_dump -Fc -Z0 | zstd -3 -T1 > file",
                 self.pg("-Fc", "-Z0") + f" | zstd -q -3 -T1 > {w}/zstd.dump.zst", shell=True,
                 stored=self.file_size(f"{w}/zstd.dump.zst"))
        self.run("pg_dump -Fc --compress=zstd:3 > file",
                 self.pg("-Fc", "--compress=zstd:3") + f" > {w}/local.dump", shell=True,
                 stored=self.file_size(f"{w}/local.dump"))
        if first and "gzip" not in self.args.skip:  # six times slower: once is enough for a 4× comparison
            self.run("pg_dump -Fp | gzip -6 > file (runbook)",
                     self.pg("-Fp") + f" | gzip -6 > {w}/plain.sql.gz", shell=True,
                     stored=self.file_size(f"{w}/plain.sql.gz"))
            os.remove(f"{w}/plain.sql.gz")
        os.remove(f"{w}/zstd.dump.zst")
        for kind, label in (("dir", "refugio backup → directory"), ("age", "refugio backup → directory, age"),
                            ("archive", "refugio backup → dir, archive_compression"),
                            ("garage", "refugio backup → Garage"), ("moto", "refugio backup → moto")):
            if kind not in self.configs or kind in self.args.skip:
                continue
            self.run(label, [self.refugio, "--quiet", "--config", self.configs[kind], "backup", "--json"],
                     env=self.s3_env.get(kind), stored=self.stored_of_manifest,
                     server=kind if kind in self.s3_env else None)

    def fresh_target(self):
        self.psql("postgres", "DROP DATABASE IF EXISTS target")
        self.psql("postgres", "CREATE DATABASE target")

    def check_target(self, label):
        got = self.psql("target", "SELECT md5(string_agg(md5(t::text), '' ORDER BY id)) FROM trips t")
        if got != self.checksum:
            sys.exit(f"bench: {label} restored different trips")

    def restore_round(self):
        w = self.work
        target = self.url("target")
        pr = f"{PGBIN}/pg_restore -h {w} -U postgres -d target --exit-on-error"
        for label, cmd, shell in (
            ("pg_restore local archive", f"{pr} {w}/local.dump", True),
            ("refugio restore, streamed",
             [self.refugio, "--quiet", "--config", self.configs["dir"], "restore", "--backup", "latest",
              "--target", target], False),
            ("pg_restore -j2 local archive", f"{pr} -j2 {w}/local.dump", True),
            ("refugio restore --jobs 2",
             [self.refugio, "--quiet", "--config", self.configs["dir"], "restore", "--backup", "latest",
              "--target", target, "--jobs", "2", "--temp-dir", w], False),
        ):
            self.fresh_target()
            self.run(label, cmd, shell=shell)
            self.check_target(label)
        self.psql("postgres", "DROP DATABASE IF EXISTS target")
        out = self.run("refugio verify (drill)",
                       [self.refugio, "--quiet", "--config", self.configs["dir"], "verify", "--json"])
        receipt = json.loads(out)
        if not receipt.get("verified"):
            sys.exit(f"bench: the drill did not pass: {receipt.get('failures')}")

    # -- the report --------------------------------------------------------
    def report(self):
        raw = self.best("pg_dump -Fc -Z0 > /dev/null")["wall"]
        baselines = {
            "pg_restore local archive": None, "pg_restore -j2 local archive": None,
            "refugio restore, streamed": "pg_restore local archive",
            "refugio restore --jobs 2": "pg_restore -j2 local archive",
            "refugio verify (drill)": "refugio restore, streamed",
        }
        print()
        print(f"refugio benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, PostgreSQL 16, "
              f"database {self.db_size / MIB:,.0f} MiB, best of {self.args.rounds} rounds")
        print(f"{'pipeline':<40} {'wall':>8} {'ratio':>7} {'user+sys':>14} {'peak RSS':>9} {'stored':>10}")
        for label in self.order:
            b = self.best(label)
            base = baselines.get(label, "raw")
            if base == "raw":
                ratio = f"{b['wall'] / raw:.2f}×"
            elif base is None:
                ratio = "base"
            else:
                ratio = f"{b['wall'] / self.best(base)['wall']:.2f}×"
            stored = f"{b['stored'] / MIB:,.0f} MiB" if b["stored"] else ""
            print(f"{label:<40} {b['wall']:>7.2f}s {ratio:>7} {b['user']:>6.1f}+{b['sys']:<5.1f}s "
                  f"{b['rss'] / 1024:>5.0f} MiB {stored:>10}")
        for label in self.order:
            b = self.best(label)
            if b.get("server") is not None:
                print(f"  {label}: the store server used {b['server']:.1f} s of CPU meanwhile, on the same cores")
        print()
        print("backup ratios are against `pg_dump -Fc -Z0 > /dev/null`; restore ratios against the local")
        print("archive `pg_dump -Fc --compress=zstd:3` wrote (what an operator keeps locally; refugio's default")
        print("artifact is the same archive uncompressed inside, zstd on the stream).")
        self.targets(raw)

    def targets(self, raw):
        rows = []
        def ratio(label, base_wall):
            return self.best(label)["wall"] / base_wall if label in self.results else None
        rows.append(("backup → directory ≤ 1.15× raw", ratio("refugio backup → directory", raw), 1.15))
        rows.append(("backup → Garage ≤ 1.3× raw", ratio("refugio backup → Garage", raw), 1.3))
        gz = "pg_dump -Fp | gzip -6 > file (runbook)"
        if gz in self.results:
            speedup = self.best(gz)["wall"] / self.best("refugio backup → directory")["wall"]
            rows.append(("≥ 4× faster than the runbook's gzip", 1 / speedup * 4, 1.0, f"{speedup:.1f}× faster"))
        rss = max(r["rss"] for label in self.results if label.startswith("refugio") for r in self.results[label])
        rows.append(("peak RSS ≤ 64 MiB", rss / 1024 / 64, 1.0, f"{rss / 1024:.0f} MiB"))
        rows.append(("encryption ≤ +5 %", ratio("refugio backup → directory, age",
                                               self.best("refugio backup → directory")["wall"]), 1.05))
        if "refugio restore, streamed" in self.results:
            rows.append(("streamed restore ≤ 1.0× pg_restore",
                         ratio("refugio restore, streamed", self.best("pg_restore local archive")["wall"]), 1.0))
            rows.append(("restore --jobs 2 ≤ 1.15× pg_restore -j2",
                         ratio("refugio restore --jobs 2", self.best("pg_restore -j2 local archive")["wall"]), 1.15))
            drills = self.results["refugio verify (drill)"]
            best = min(drills, key=lambda r: r["wall"])
            receipt = json.loads(best["out"])
            rto = receipt["rto"]["measured_seconds"]
            checks = receipt["phases"]["checks_seconds"] + receipt["phases"]["analyze_seconds"]
            base = self.best("refugio restore, streamed")["wall"] + checks
            rows.append(("drill RTO ≤ 1.1× (restore + checks)", rto / base, 1.1,
                         f"RTO {rto:.1f}s against {base:.1f}s"))
        print()
        for row in rows:
            name, value, bound = row[:3]
            if value is None:
                print(f"  {name:<42} not measured")
                continue
            note = row[3] if len(row) > 3 else f"{value:.3f}"
            print(f"  {name:<42} {note:<28} {'holds' if value <= bound else 'MISSED'}")

    def cleanup(self):
        if self.server:
            self.server.terminate()
            self.server.wait()
        shutil.rmtree(self.work, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--refugio", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--size-gb", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--backup-only", action="store_true", help="skip the restores and the drill")
    p.add_argument("--work-dir", default=None)
    p.add_argument("--skip", action="append", default=[],
                   help="leave out a pipeline: gzip, age, archive, garage, moto")
    args = p.parse_args()
    b = Bench(args)
    try:
        b.start_server()
        b.load()
        b.setup_configs()
        for r in range(args.rounds):
            log(f"round {r + 1} of {args.rounds}: backups")
            b.backup_round(first=r == 0)
        if not args.backup_only:
            for r in range(args.rounds):
                log(f"round {r + 1} of {args.rounds}: restores")
                b.restore_round()
        b.report()
    finally:
        b.cleanup()


if __name__ == "__main__":
    main()
