"""Fuzz worker: mutate one kind of b2luca input many times, feed each case to the production reader.

    python fuzz_worker.py KIND N SEED WORKDIR      KIND: yaml | mille | conditions | rundb

Runs in its own process under ``resource.setrlimit(RLIMIT_AS)`` (what it has after imports + 1 GiB) and
a limit of 10 s of CPU time per case (``ITIMER_PROF``: a loaded, shared machine does not make a case fail,
a loop does); prints one JSON object: counts of clear errors and correct successes, the slowest
case, the peak RSS and every failure (a traceback, a message that does not name the file, a wrong
success, a case over the time or memory limit). Deterministic for a given SEED.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import resource
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CASE_SECONDS = 10
EXTRA_BYTES = 1 << 30


class CaseTimeout(Exception):
    """A case ran past CASE_SECONDS."""


def _alarm(signum, frame):  # pragma: no cover - only on a hang
    raise CaseTimeout(f"case used more than {CASE_SECONDS} s of CPU time")


# --- mutations of bytes ---------------------------------------------------------------------------
def mutate_bytes(rng: random.Random, data: bytes, ops: int = 3) -> bytes:
    """A few random byte-level damages: bit flips, byte sets, truncation, deletion, duplication, garbage."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, ops)):
        if not buf:
            buf += bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
            continue
        op = rng.randrange(7)
        at = rng.randrange(len(buf))
        if op == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[at] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.getrandbits(8)])
        elif op == 2:
            del buf[at:]
        elif op == 3:
            del buf[at: at + rng.randint(1, 64)]
        elif op == 4:
            n = rng.randint(1, 256)
            buf[at:at] = buf[at: at + n]
        elif op == 5:
            buf[at:at] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 32)))
        else:
            end = min(len(buf), at + rng.randint(4, 128))
            buf[at:end] = bytes(end - at)
    return bytes(buf)


# --- YAML -----------------------------------------------------------------------------------------
VALUES = ["99999999999999999999", str(2 ** 70), "1000000000000", ".nan", ".inf", "-.inf", "-1", "0", "''", "~",
          "[]", "{}", "[1, 2]", "{a: 1}", "yes", "1e12", "3.5", "'..'", "../../../X", "\"\\xff\"", "*nope",
          "&a [*a]", "!!python/object:os.system x", "\"" + "x" * 5000 + "\"", "[" * 40 + "]" * 40, "2026-12-07"]
KEYS = ["bucket", "name", "seed", "events", "last_run", "first_run", "workers", "max_file_size_mb", "timeout",
        "expert_config", "CDCTimeZeros", "max_iterations", "select", "token", "extra", "<<", "1", "schema_version"]


def mutate_yaml(rng: random.Random, text: str) -> bytes:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(9)
        i = rng.randrange(len(lines)) if lines else 0
        if op == 0 and lines:  # replace a value
            head = lines[i].split(":", 1)[0]
            lines[i] = f"{head}: {rng.choice(VALUES)}"
        elif op == 1 and lines:  # duplicate a line (duplicate key)
            lines.insert(i, lines[i])
        elif op == 2 and lines:
            del lines[i]
        elif op == 3:  # a new key at some indentation
            lines.insert(i, " " * rng.choice([0, 2, 4, 6]) + f"{rng.choice(KEYS)}: {rng.choice(VALUES)}")
        elif op == 4 and len(lines) > 1:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 5:  # an alias bomb somewhere
            bomb = ["lol0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
            bomb += [f"lol{k}: &l{k} [" + ", ".join([f"*l{k - 1}"] * 10) + "]" for k in range(1, rng.randint(2, 9))]
            lines[0:0] = bomb
        elif op == 6 and lines:  # indentation damage
            lines[i] = ("\t" if rng.random() < 0.3 else " " * rng.randint(0, 7)) + lines[i].lstrip()
        elif op == 7 and lines:  # an expert_config override
            lines.append("  expert_config: {CDCTimeZeros: {%s: %s}}" % (rng.choice(KEYS), rng.choice(VALUES)))
        else:
            pass
    data = ("\n".join(lines) + "\n").encode("utf-8")
    r = rng.random()
    if r < 0.15:
        data = mutate_bytes(rng, data, 2)
    elif r < 0.18:
        data = data.decode().encode(rng.choice(["utf-16", "utf-16-le", "utf-32"]))
    return data


def run_yaml(rng: random.Random, n: int, work: Path, record) -> None:
    from b2luca.catalogue import discover
    from b2luca.config import BucketConfig, ConfigError, load_config
    from b2luca.config_checks import expert_config_problems

    text = (REPO / "configs" / "demo.yaml").read_text().replace("../", f"{REPO}/")
    defaults = {name: info.settings.expert_config for name, info in discover(REPO / "calibrations").calibrations.items()}
    path = work / "bucket.yaml"
    for case in range(n):
        path.write_bytes(mutate_yaml(rng, text))

        def check():
            try:
                cfg = load_config(path)
                problems = expert_config_problems(path, cfg.calibrations.expert_config, defaults)
            except ConfigError as exc:
                return "error", str(exc), str(path)
            assert isinstance(cfg, BucketConfig)
            b = cfg.bucket
            assert 0 <= b.first_run <= b.last_run <= 999999 and 0 <= b.experiment <= 9999, b
            assert math.isfinite(cfg.archive.max_file_size_mb) and cfg.archive.max_file_size_mb > 0
            if cfg.simulation:
                assert 0 <= cfg.simulation.seed < 2 ** 63 and all(0 <= v <= 10 ** 8 for v in cfg.simulation.events.values())
            if problems:
                return "error", "\n".join(problems), str(path)
            return "ok", "", str(path)

        record(case, check)


# --- Mille ----------------------------------------------------------------------------------------
def run_mille(rng: random.Random, n: int, work: Path, record) -> None:
    from b2luca.alignment import Assembler, MilleError, read_mille, write_mille
    from b2luca.alignment.toy import barrel_geometry, generate_tracks

    geo = barrel_geometry(60, n_layers=4)
    recs = generate_tracks(geo, 150, np.zeros(6 * geo.n_sensors), np.random.default_rng(11))
    bases = {}
    for fortran in (False, True):
        for double in (False, True):
            p = work / f"base_{int(fortran)}{int(double)}.bin"
            write_mille(p, recs, fortran=fortran, double=double)
            bases[(fortran, double)] = p.read_bytes()
    for case in range(n):
        fortran, double = rng.choice(list(bases))
        data = mutate_bytes(rng, bases[(fortran, double)])
        if case % 2:  # gzip: damage the plain bytes or the compressed stream
            data = gzip.compress(data, compresslevel=1)
            if rng.random() < 0.6:
                data = mutate_bytes(rng, data, 2)
            path = work / f"case{case % 7}.bin.gz"
        else:
            path = work / f"case{case % 7}.bin"
        path.write_bytes(data)

        def check():
            try:
                back = read_mille(path)
                asm = Assembler()
                asm.add(back)
            except MilleError as exc:
                return "error", str(exc), str(path)
            # a success must be consistent: sigma > 0, all finite, local indices within the record
            assert np.all(back.sigma > 0) and np.isfinite(back.value).all() and np.isfinite(back.loc_der).all()
            assert np.all(np.diff(back.rec_ptr) >= 0) and np.all(back.glb_label > 0)
            assert asm.n_records == back.n_records + back.n_nonfinite
            return "ok", "", str(path)

        record(case, check)


# --- conditions database --------------------------------------------------------------------------
def run_conditions(rng: random.Random, n: int, work: Path, record) -> None:
    from b2luca.conditions import LocalDatabase, payload_checksum
    from b2luca.conditions.database import DatabaseError, PayloadError
    from b2luca.conditions.verify import verify_database
    from b2luca.iov import ExpRun, IoV

    base = LocalDatabase(work / "base").create()
    data = {"A": {"x": np.arange(50.0)}, "B": {"m": np.eye(3, dtype=np.int32), "flag": np.array(True)}}
    for name, arrays in data.items():
        base.store(name, arrays, IoV(26, 1, -1, -1))
    sums = {name: payload_checksum(arrays) for name, arrays in data.items()}
    files = sorted(p.name for p in base.path.glob("*.root"))
    garbage = [b"dbstore/../../x 1 26,1,-1,-1", b"dbstore/A ../y 26,1,-1,-1", b"\xff\xfe garbage", b"dbstore/A 1",
               b"dbstore/A 1 26,1,-1,-1 extra", b"dbstore/A x 26,1", b"dbstore/B 1 a,b,c,d", b"dbstore/ 1 26,1,-1,-1"]
    for case in range(n):
        db = LocalDatabase(work / f"case{case % 5}")
        shutil.rmtree(db.path, ignore_errors=True)
        shutil.copytree(base.path, db.path)
        target = rng.random()
        if target < 0.45:
            txt = db.database_txt.read_bytes()
            if rng.random() < 0.5:
                lines = txt.splitlines()
                lines.insert(rng.randint(0, len(lines)), rng.choice(garbage))
                txt = b"\n".join(lines) + b"\n"
            else:
                txt = mutate_bytes(rng, txt, 2)
            db.database_txt.write_bytes(txt)
        else:
            victim = db.path / rng.choice(files)
            r = rng.random()
            if r < 0.1:
                victim.unlink()
            elif r < 0.2:
                victim.write_bytes(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 4000))))
            else:
                victim.write_bytes(mutate_bytes(rng, victim.read_bytes(), 2))

        def check():
            problems = verify_database(db.path)
            errors = []
            for name in data:
                try:
                    arrays = db.read(name, ExpRun(26, 5))
                except (DatabaseError, PayloadError) as exc:
                    errors.append(str(exc))
                    continue
                except KeyError as exc:  # a damaged line can make a payload absent: named by the look-up
                    errors.append(str(exc))
                    continue
                assert payload_checksum(arrays) == sums[name], f"{name}: wrong content read without an error"
            if problems:
                assert all(line.startswith(str(db.path)) for line in problems), problems
                return "error", "\n".join(problems + errors), str(db.path)
            assert not errors or all("no payload" in e for e in errors), errors  # intact: every read works
            return "ok", "", str(db.path)

        record(case, check)


# --- RunDB snapshots ------------------------------------------------------------------------------
def run_rundb(rng: random.Random, n: int, work: Path, record) -> None:
    from b2luca.rundb import RunDBError, read_snapshot, write_snapshot

    records = [{"experiment": 26, "run": r, "run_type": "physics", "beam_energy": "4S",
                "detectors": {"magnet": "On"}, "quality_expert": {"overall": "Good"}} for r in range(1, 9)]
    base = work / "base.csv"
    write_snapshot(records, base)
    cells = ["abc", "-1", "", "2.5", "1e5", "99999999999999999999", " 7", "0x1F", "nan", "\"3\"", "26,26"]
    for case in range(n):
        lines = base.read_text().splitlines()
        op = rng.randrange(6)
        if op == 0:  # a bad cell
            i = rng.randrange(1, len(lines))
            row = lines[i].split(",")
            row[rng.randrange(len(row))] = rng.choice(cells)
            lines[i] = ",".join(row)
        elif op == 1:
            lines.append(lines[rng.randrange(1, len(lines))])
        elif op == 2:
            i = rng.randrange(1, len(lines))
            lines.append(lines[i].replace("physics", "cosmic"))
        elif op == 3:
            lines = lines[:1]
        elif op == 4:
            lines.insert(rng.randrange(1, len(lines)), "")
        data = ("\n".join(lines) + "\n").encode()
        if op == 5 or rng.random() < 0.2:
            data = mutate_bytes(rng, data, 2)
        path = work / "snap.csv"
        path.write_bytes(data)

        def check():
            try:
                frame = read_snapshot(path)
            except RunDBError as exc:
                return "error", str(exc), str(path)
            assert len(frame) > 0 and str(frame["run"].dtype) == "int64" and str(frame["experiment"].dtype) == "int64"
            assert not frame.duplicated(["experiment", "run"]).any() and (frame["run"] >= 0).all()
            return "ok", "", str(path)

        record(case, check)


RUNNERS = {"yaml": run_yaml, "mille": run_mille, "conditions": run_conditions, "rundb": run_rundb}


def main(argv: list[str]) -> int:
    kind, n, seed, work = argv[0], int(argv[1]), int(argv[2]), Path(argv[3])
    work.mkdir(parents=True, exist_ok=True)
    import b2luca.alignment, b2luca.conditions.verify, b2luca.config, b2luca.rundb  # noqa: F401,E401 (imports first)

    with open("/proc/self/status") as handle:
        vm = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + EXTRA_BYTES, vm + EXTRA_BYTES))
    signal.signal(signal.SIGPROF, _alarm)
    out = {"kind": kind, "cases": 0, "errors": 0, "ok": 0, "failures": [], "slowest_s": 0.0}

    def record(case: int, check) -> None:
        out["cases"] += 1
        start = time.process_time()
        signal.setitimer(signal.ITIMER_PROF, CASE_SECONDS)
        try:
            verdict, message, where = check()
            signal.setitimer(signal.ITIMER_PROF, 0)
            if verdict == "error":
                bad = [line for line in message.splitlines() if where not in line]
                if not message.strip() or bad or "Traceback" in message:
                    out["failures"].append(f"case {case}: unclear message: {message[:300]!r}")
                out["errors"] += 1
            else:
                out["ok"] += 1
        except BaseException as exc:  # a traceback, a wrong success, a timeout, MemoryError
            signal.setitimer(signal.ITIMER_PROF, 0)
            tb = traceback.format_exception(exc)
            out["failures"].append(f"case {case}: {type(exc).__name__}: {str(exc)[:300]} | {''.join(tb[-3:])[:800]}")
        out["slowest_s"] = max(out["slowest_s"], time.process_time() - start)  # CPU seconds

    RUNNERS[kind](random.Random(seed), n, work, record)
    # VmHWM: this process image's peak RSS (ru_maxrss would carry over the parent's peak through fork/exec)
    with open("/proc/self/status") as handle:
        out["peak_rss_mb"] = next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:")) / 1024
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
