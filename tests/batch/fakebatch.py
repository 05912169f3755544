"""Command stand-ins for LSF (bsub/bjobs/bkill) and HTCondor (condor_submit/condor_q/condor_history/condor_rm).

Written from the tools' documented behaviour as b2luigi uses it: the job really runs (in the background,
its own session), its stdout/stderr go where the submission says, and the status commands answer in the
tools' JSON shapes.  Every call is recorded in ``$FAKEBATCH_DIR/calls.jsonl`` with the caller's
environment, so a test can check what was submitted and that no secret went with it.

Usage (through the wrapper scripts :func:`install` writes): ``fakebatch.py TOOL ARGS...``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

STATE = Path(os.environ.get("FAKEBATCH_DIR", "/tmp/fakebatch"))
#: A token-looking value the batch tests put into the driver's environment; no job file, log or submission
#: may carry it.
SECRET = "glpat-b2luca-test-SECRET-4711"
TOOLS = ("bsub", "bjobs", "bkill", "condor_submit", "condor_q", "condor_history", "condor_rm")


def install(bin_dir: Path) -> None:
    """Write one executable wrapper per tool into ``bin_dir`` (put it first on PATH)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        path = bin_dir / tool
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" {tool} "$@"\n')
        path.chmod(0o755)


def _next_id() -> int:
    counter = STATE / "next_id"
    value = int(counter.read_text()) if counter.exists() else 100
    counter.write_text(str(value + 1))
    return value


def _start(job_id: int, script: str, stdout: str, stderr: str, env: dict[str, str], cwd: str) -> None:
    jobdir = STATE / "jobs" / str(job_id)
    jobdir.mkdir(parents=True)
    command = f'"{script}" >"{stdout}" 2>"{stderr}"; echo $? >"{jobdir}/rc.tmp"; mv "{jobdir}/rc.tmp" "{jobdir}/rc"'
    process = subprocess.Popen(["/bin/sh", "-c", command], env=env, cwd=cwd, start_new_session=True,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (jobdir / "pid").write_text(str(process.pid))


def _state(job_id: str) -> str:
    """run | done | exit | removed | unknown"""
    jobdir = STATE / "jobs" / str(job_id)
    if not jobdir.is_dir():
        return "unknown"
    if (jobdir / "removed").exists():
        return "removed"
    if (jobdir / "rc").exists():
        return "done" if (jobdir / "rc").read_text().strip() == "0" else "exit"
    return "run"


def _kill(job_id: str) -> None:
    jobdir = STATE / "jobs" / str(job_id)
    if jobdir.is_dir() and _state(job_id) == "run":
        (jobdir / "removed").write_text("")
        try:
            os.killpg(int((jobdir / "pid").read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def _all_ids() -> list[str]:
    jobs = STATE / "jobs"
    return sorted((p.name for p in jobs.iterdir()), key=int) if jobs.is_dir() else []


def bsub(args: list[str]) -> None:
    if os.environ.get("FAKEBATCH_REFUSE"):  # a queue that refuses jobs, as an esub would
        print("Request aborted by esub. Job not submitted.", file=sys.stderr)
        raise SystemExit(255)
    opts, i = {}, 0
    while i < len(args) - 1:
        if args[i] in ("-q", "-n", "-J", "-eo", "-oo", "-M", "-W"):
            opts[args[i]] = args[i + 1]
            i += 2
        else:
            opts.setdefault("flags", []).append(args[i])
            i += 1
    script = args[-1]
    job_id = _next_id()
    env = dict(os.environ) if "-env all" in opts.get("flags", []) else {"PATH": "/usr/bin:/bin"}
    _start(job_id, script, opts["-oo"], opts["-eo"], env, os.getcwd())
    print(f"Job <{job_id}> is submitted to queue <{opts.get('-q', 'normal')}>.")


def bjobs(args: list[str]) -> None:
    ids = [a for a in args if a.isdigit()] or _all_ids()
    stat = {"run": "RUN", "done": "DONE", "exit": "EXIT", "removed": "EXIT"}
    records = [{"JOBID": i, "STAT": stat[_state(i)]} for i in ids if _state(i) != "unknown"]
    print(json.dumps({"COMMAND": "bjobs", "JOBS": len(records), "RECORDS": records}))


def condor_submit(args: list[str]) -> None:
    submit = {}
    for line in Path(args[0]).read_text().splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            submit[key.strip().lower()] = value.strip()
    job_id = _next_id()
    getenv = submit.get("getenv", "false").lower() in ("true", "1", "yes")
    env = dict(os.environ) if getenv else {}
    _start(job_id, submit["executable"], submit["output"], submit["error"], env, os.getcwd())
    (STATE / "jobs" / str(job_id) / "submit.json").write_text(json.dumps(submit))
    print(f"Submitting job(s).\n1 job(s) submitted to cluster {job_id}.")


def _condor_records(ids: list[str], live: bool) -> list[dict]:
    out = []
    for i in ids:
        state = _state(i)
        if state == "unknown" or (state == "run") != live:
            continue
        rc_file = STATE / "jobs" / i / "rc"
        record = {"ClusterId": int(i), "JobStatus": {"run": 2, "done": 4, "exit": 4, "removed": 3}[state],
                  "UserLog": str(STATE / "jobs" / i / "job.log")}
        if not live and rc_file.exists():
            record["ExitCode"] = int(rc_file.read_text())
        out.append(record)
    return out


def condor_q(args: list[str]) -> None:
    ids = [a for a in args if a.isdigit()] or _all_ids()
    records = _condor_records(ids, live=True)
    if records:
        print(json.dumps(records))


def condor_history(args: list[str]) -> None:
    ids = [a for a in args[args.index("-match") + 2:]] if "-match" in args else _all_ids()
    records = _condor_records(ids, live=False)
    if records:
        print(json.dumps(records))


def main(argv: list[str]) -> int:
    tool, args = argv[0], argv[1:]
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "calls.jsonl", "a") as handle:
        handle.write(json.dumps({"tool": tool, "args": args, "cwd": os.getcwd(), "env": dict(os.environ)}) + "\n")
    if tool in ("bkill", "condor_rm"):
        for job_id in args:
            _kill(job_id)
        return 0
    {"bsub": bsub, "bjobs": bjobs, "condor_submit": condor_submit, "condor_q": condor_q,
     "condor_history": condor_history}[tool](args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
