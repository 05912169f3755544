"""Native runner: caf_config.json + input_data.json in, caf_outputdb_results/<Name>/ out, like b2caf-prompt-run."""

import contextlib
import json
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from b2luca.conditions import LocalDatabase, write_payload
from b2luca.iov import ExpRun, IoV
from b2luca.runners import NativeRunner, job_server, log_tail, output_database

#: how a job is started: a fresh ``python -m`` subprocess, or a fork of the run's job server (issue 15)
MODES = ("subprocess", "server")


def _started(mode):
    """The context a runner runs in: a job server for ``server`` (started now, with the current environment)."""
    return job_server.serving() if mode == "server" else contextlib.nullcontext()

SCRIPT = textwrap.dedent('''
    """Counts input files; reads an upstream constant through the database chain."""
    import os
    import numpy as np
    from b2luca.catalogue import CalibrationSettings, INPUT_DATA_FILTERS

    settings = CalibrationSettings(
        name="CountFiles", expert_username="someone", subsystem="example", description=__doc__,
        input_data_formats=["raw"], input_data_names=["hadron_calib"],
        input_data_filters={"hadron_calib": [INPUT_DATA_FILTERS["Data Tag"]["hadron_calib"]]},
        depends_on=[], expert_config={"scale": 1.0, "fail": False}, produced_payloads=["CountFiles"])

    def calibrate(job):
        if job.expert_config["fail"]:
            raise RuntimeError("asked to fail")
        upstream = job.database_chain.read("Upstream", job.requested_iov.first)["value"]
        n = sum(len(v) for v in job.input_files.values())
        import scipy.linalg  # noqa: F401 - loads scipy's own BLAS inside the job, after the runner's limit
        from threadpoolctl import threadpool_info
        job.log.info("blas threads: %s", sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}))
        secrets = [k for k in os.environ if "TOKEN" in k]
        job.log.info("env secrets visible: %s", secrets)
        with open(f"/proc/{os.getppid()}/environ", "rb") as parent:
            job.log.info("parent has secrets: %s", any(s in parent.read() for s in (b"glpat-", b"rundb-secret")))
        job.log.info("string hash: %s; argv0: %s", hash("CountFiles"), os.path.basename(__import__("sys").argv[0]))
        job.log.info("extra preload present: %s", "xml.dom.minidom" in __import__("sys").modules)
        links = [os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")]
        job.log.info("sockets open: %s", sum("socket:" in link for link in links))
        job.output_db.store("CountFiles", {"n": np.array([n * job.expert_config["scale"]]),
                                           "upstream": upstream}, job.output_iov)
''')


def _setup(tmp_path, expert_config, backend_args=None):
    script = tmp_path / "calibrations" / "count_files.py"
    script.parent.mkdir()
    script.write_text(SCRIPT)
    data = tmp_path / "data" / "e0026" / "r00001" / "hadron_calib"
    data.mkdir(parents=True)
    for i in range(3):
        write_payload(data / f"raw_{i}.root", {"x": np.arange(3)})  # any ROOT file will do
    prompt = LocalDatabase(tmp_path / "conditions" / "prompt").create()
    LocalDatabase(tmp_path / "conditions" / "nominal").store("Upstream", {"value": np.array([7.0])}, IoV.always())
    work = tmp_path / "work"
    work.mkdir()
    caf = {"caf_script": str(script), "database_chain": ["nominal"], "backend_args": backend_args or {},
           "requested_iov": [26, 1, 26, 8], "expert_config": expert_config,
           "testing_payloads": str(prompt.database_txt),
           "b2luca": {"conditions_directory": str(tmp_path / "conditions")}}
    (work / "caf_config.json").write_text(json.dumps(caf))
    (work / "input_data.json").write_text(json.dumps({"hadron_calib": [[str(data.parent.parent / "r00001" / "hadron_calib"), [26, 1]]]}))
    return work


@pytest.mark.parametrize("mode", MODES)
def test_native_runner_leaves_basf2_layout(tmp_path, monkeypatch, mode):
    monkeypatch.setenv("GITLAB_PRIVATE_TOKEN", "glpat-secret")
    monkeypatch.setenv("B2LUCA_RUNDB_KEY", "rundb-secret")
    work = _setup(tmp_path, {"scale": 2.0, "fail": False})
    with _started(mode):
        result = NativeRunner(secret_names=("B2LUCA_RUNDB_KEY",)).calibrate(
            work / "caf_config.json", work / "input_data.json", work, work / "calibrate.log")
    assert result.ok, log_tail(result.log_path)
    out = LocalDatabase(output_database(work, "CountFiles"))
    assert (out.path / "database.txt").read_text().split() == ["dbstore/CountFiles", "1", "26,1,-1,-1"]
    assert list(out.path.glob("dbstore_CountFiles_rev_1.root"))
    payload = out.read("CountFiles", ExpRun(26, 3))
    assert payload["n"][0] == 6.0  # 3 files from the directory entry, scaled by the expert_config
    assert payload["upstream"][0] == 7.0  # the chain reached the nominal tag
    log = result.log_path.read_text()
    assert "env secrets visible: []" in log and "glpat-secret" not in log
    assert "argv0: native_job.py" in log
    if mode == "server":  # the job server (the job's parent) never had the secrets either
        assert "parent has secrets: False" in log


def test_job_server_job_equals_subprocess_job(tmp_path):
    """The same payload values, string hash (PYTHONHASHSEED=0) and log lines through the server as a subprocess."""
    logs, payloads = {}, {}
    for mode in MODES:
        (tmp_path / mode).mkdir()
        work = _setup(tmp_path / mode, {"scale": 2.0, "fail": False})
        with _started(mode):
            result = NativeRunner().calibrate(work / "caf_config.json", work / "input_data.json", work, work / "c.log")
        assert result.ok, log_tail(result.log_path)
        logs[mode] = [line.split(": ", 1)[-1] for line in result.log_path.read_text().splitlines()
                      if "hash" in line or "blas" in line]
        payloads[mode] = LocalDatabase(output_database(work, "CountFiles")).read("CountFiles", ExpRun(26, 1))
    assert logs["server"] == logs["subprocess"] and len(logs["server"]) == 2
    assert {k: v.tobytes() for k, v in payloads["server"].items()} == \
        {k: v.tobytes() for k, v in payloads["subprocess"].items()}


def test_job_server_timeout_kills_the_job(tmp_path):
    work = _setup(tmp_path, {"scale": 1.0, "fail": False})
    script = tmp_path / "calibrations" / "count_files.py"
    script.write_text(script.read_text().replace("    if job.expert_config[\"fail\"]:",
                                                 "    import time; time.sleep(60)\n    if job.expert_config[\"fail\"]:"))
    with job_server.serving():
        runner = NativeRunner(timeout_min=2 / 60)
        result = runner.calibrate(work / "caf_config.json", work / "input_data.json", work, work / "calibrate.log")
    assert result.returncode < 0 and result.duration < 20
    assert "killed after the time limit of 2 s" in result.log_path.read_text()


@pytest.mark.parametrize("mode", MODES)
def test_native_runner_failure_keeps_traceback(tmp_path, mode):
    work = _setup(tmp_path, {"scale": 1.0, "fail": True})
    with _started(mode):
        result = NativeRunner().calibrate(work / "caf_config.json", work / "input_data.json", work,
                                          work / "calibrate.log")
    assert not result.ok and result.returncode == 1
    assert "RuntimeError: asked to fail" in log_tail(result.log_path)


@pytest.mark.parametrize("mode", MODES)
def test_native_runner_gives_blas_the_calibrations_cpus(tmp_path, monkeypatch, mode):
    """BLAS threads = the calibration's cpus (1 by default), whatever the environment asks: side-by-side
    processes must not spin threads for cores they do not hold, and a batch job computes like a local run."""
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    for cpus, expected in ((None, "[1]"), (2, "[2]")):
        (tmp_path / str(cpus)).mkdir()
        work = _setup(tmp_path / str(cpus), {"scale": 1.0, "fail": False}, {} if cpus is None else {"cpus": cpus})
        with _started(mode):
            result = NativeRunner().calibrate(work / "caf_config.json", work / "input_data.json", work,
                                              work / "cal.log")
        assert result.ok, log_tail(result.log_path)
        assert f"blas threads: {expected}" in result.log_path.read_text()


def _sleeping_job(tmp_path):
    """A calibration job that writes its pid to ``<work>/pid`` and then sleeps for a minute."""
    work = _setup(tmp_path, {"scale": 1.0, "fail": False})
    script = tmp_path / "calibrations" / "count_files.py"
    script.write_text(script.read_text().replace(
        "    if job.expert_config[\"fail\"]:",
        "    import time; (job.work_dir / 'pid').write_text(str(os.getpid())); time.sleep(60)\n"
        "    if job.expert_config[\"fail\"]:"))
    return work


def _wait_for(path, seconds=60.0):
    """Wait until ``path`` exists and holds text (at most ``seconds``): the job creates the file, then writes
    its pid, so a reader that sees the file as soon as it exists can read it empty (seen in CI, under load)."""
    import time

    deadline = time.monotonic() + seconds
    while not (path.is_file() and path.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_job_server_job_dies_with_its_caller(tmp_path):
    """A killed luigi worker (the caller) takes its job down, as PR_SET_PDEATHSIG does for a subprocess."""
    import multiprocessing
    import os
    import signal
    import time

    work = _sleeping_job(tmp_path)
    with job_server.serving():
        caller = multiprocessing.get_context("fork").Process(target=NativeRunner().calibrate, args=(
            work / "caf_config.json", work / "input_data.json", work, work / "calibrate.log"))
        caller.start()
        _wait_for(work / "pid")
        pid = int((work / "pid").read_text())
        os.kill(caller.pid, signal.SIGKILL)
        caller.join()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError("the job outlived its caller")


@pytest.mark.parametrize("ml", [False, True], ids=["plain", "ml-server"])
def test_jobs_still_running_when_the_run_ends_are_killed(tmp_path, ml):
    """An interrupted run (the driver leaves the server's block with jobs running) leaves no job behind, nor
    the ML server that ran it."""
    import os
    import threading
    import time

    work = _sleeping_job(tmp_path)
    if ml:
        script = tmp_path / "calibrations" / "count_files.py"
        script.write_text(script.read_text() + "\n\ndef _never_called():\n    import torch  # noqa: F401\n")
    results = []
    with job_server.serving(extra_preloads=("xml.dom.minidom",) if ml else ()):
        caller = threading.Thread(target=lambda: results.append(NativeRunner().calibrate(
            work / "caf_config.json", work / "input_data.json", work, work / "calibrate.log")))
        caller.start()
        _wait_for(work / "pid")
        ppid = lambda pid: int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # noqa: E731
        server = ppid(int((work / "pid").read_text()))
        assert (ppid(server) != os.getpid()) is ml  # the ML server is a fork of the server this process started
        start = time.monotonic()
    caller.join(timeout=30)
    assert results and results[0].returncode < 0 and time.monotonic() - start < 10
    for pid in (int((work / "pid").read_text()), server):
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]:
            assert time.monotonic() < deadline, f"process {pid} outlived the run"
            time.sleep(0.05)


def test_ml_jobs_are_killed_when_the_run_ends_during_the_ml_servers_slow_preload(tmp_path, monkeypatch):
    """The ML server acts on SIGTERM at once, even inside a long import (torch's): it kills its running jobs and
    abandons the import, so no ML job outlives the run, however long its preload would still take."""
    import os
    import threading

    work = _sleeping_job(tmp_path)
    script = tmp_path / "calibrations" / "count_files.py"
    script.write_text(script.read_text() + "\n\ndef _never_called():\n    import torch  # noqa: F401\n")
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "b2luca_slow_preload.py").write_text(
        "import os, time\nopen(os.environ['B2LUCA_SLOW_PRELOAD_MARK'], 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (str(modules), os.environ.get("PYTHONPATH")))))
    monkeypatch.setenv("B2LUCA_SLOW_PRELOAD_MARK", str(tmp_path / "ml_server_pid"))
    results = []
    with job_server.serving(extra_preloads=("b2luca_slow_preload",)):
        caller = threading.Thread(target=lambda: results.append(NativeRunner().calibrate(
            work / "caf_config.json", work / "input_data.json", work, work / "calibrate.log")))
        caller.start()
        _wait_for(work / "pid")
        _wait_for(tmp_path / "ml_server_pid")
        assert (work / "pid").is_file() and (tmp_path / "ml_server_pid").is_file()  # the job runs, the import sleeps
        start = time.monotonic()
    caller.join(timeout=30)
    assert results and results[0].returncode < 0
    for pid in (int((work / "pid").read_text()), int((tmp_path / "ml_server_pid").read_text())):
        while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]:
            assert time.monotonic() - start < 10, f"process {pid} outlived the run"
            time.sleep(0.05)


def test_blas_limit_reuses_its_scan_until_a_library_is_loaded(monkeypatch):
    """The threadpoolctl controller is made once; a newly loaded shared library (a script importing torch)
    makes a fresh one, and a job asking for the server's thread count changes nothing."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from b2luca.runners import native_job

    libraries = {"now": frozenset({"/lib/libopenblas.so"})}
    monkeypatch.setattr(native_job, "_shared_libraries", lambda: libraries["now"])
    monkeypatch.setattr(native_job, "_controller", None)
    blas = lambda: sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})  # noqa: E731
    with threadpool_limits(limits=None):  # this process's BLAS threads are as before afterwards
        native_job.set_blas_threads(1)
        first = native_job._controller
        assert first is not None and first[2] == 1 and blas() == [1]
        with native_job.blas_limit(1):  # already set: nothing to do
            assert native_job._controller is first and blas() == [1]
        with native_job.blas_limit(2):
            assert native_job._controller is first and blas() == [2]
        assert blas() == [1]
        libraries["now"] = frozenset({"/lib/libopenblas.so", "/lib/libtorch.so"})
        with native_job.blas_limit(1):  # a new library: scanned again, and limited (the new one may not be at 1)
            assert native_job._controller is not first and native_job._controller[2] is None
        with native_job.blas_limit(2):
            assert blas() == [2]


def test_job_server_serves_while_it_preloads_and_says_when_done(tmp_path):
    """Jobs are served from the start; the server imports its preloads between them and logs when it is done
    (every preload imported: later jobs are forked with numpy, scipy and matplotlib already loaded).  The ML
    preloads are imported by a second server that takes only the jobs of scripts using the ML library, so the
    other jobs never wait for torch's import (issue 15)."""
    work = _setup(tmp_path, {"scale": 1.0, "fail": False})
    server_log = tmp_path / "job_server.log"
    with job_server.serving(log_path=server_log, extra_preloads=("xml.dom.minidom",)):
        for i in range(2):
            result = NativeRunner().calibrate(work / "caf_config.json", work / "input_data.json", work,
                                              work / f"{i}.log")
            assert result.ok, log_tail(result.log_path)
        # forked before the ML server took over its listener: the job holds only its own connection
        assert "sockets open: 1\n" in (work / "0.log").read_text()
        deadline = time.monotonic() + 120
        while server_log.read_text().count(job_server.READY) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server_log.read_text().count(job_server.READY) == 2  # the server and its ML server
        result = NativeRunner().calibrate(work / "caf_config.json", work / "input_data.json", work, work / "2.log")
        assert result.ok, log_tail(result.log_path)
        assert "extra preload present: False" in result.log_path.read_text()  # not an ML script: the plain server
        script = tmp_path / "calibrations" / "count_files.py"
        script.write_text(script.read_text() + "\n\ndef _never_called():\n    import torch  # noqa: F401\n")
        result = NativeRunner().calibrate(work / "caf_config.json", work / "input_data.json", work, work / "3.log")
        assert result.ok, log_tail(result.log_path)
        assert "extra preload present: True" in result.log_path.read_text()  # the ML server, forked with them
    assert job_server.current_address() is None and job_server.address_for(["python", "-m", "x", "calibrate"]) is None


def test_torch_is_preloaded_only_for_scripts_that_use_the_ml_library(tmp_path):
    """A run whose calibrations import b2luca.ml (or torch), even inside a function, gets torch preloaded in its job
    server; a run without them does not pay for the import."""
    plain = tmp_path / "plain.py"
    plain.write_text("import numpy\ndef calibrate(job):\n    from b2luca.reco import fit\n")
    ml = tmp_path / "ml.py"
    ml.write_text("def calibrate(job):\n    from b2luca.ml.pxd_gan import train\n")
    broken = tmp_path / "broken.py"
    broken.write_text("def (:\n")
    assert job_server.preloads_for([plain, broken]) == ()
    pytest.importorskip("torch")
    assert job_server.preloads_for([plain, broken, ml]) == job_server.ML_PRELOAD
    for text in ("import torch.nn\n", "def calibrate(job):\n    from b2luca import ml\n"):
        direct = tmp_path / "direct.py"
        direct.write_text(text)
        assert job_server.preloads_for([direct]) == job_server.ML_PRELOAD, text


def test_command_parser_is_built_once_and_each_parse_starts_afresh():
    from b2luca.runners import native_job

    assert native_job.command_parser() is native_job.command_parser()  # the job server builds it for its jobs
    first = native_job.command_parser().parse_args(["validate", "s.py", "job", "in.json", "v.json", "--reference", "db"])
    second = native_job.command_parser().parse_args(["validate", "s.py", "job", "in.json", "v.json"])
    assert (first.reference, second.reference) == (["db"], [])  # the append default is not shared between jobs
    assert native_job.command_parser().parse_args(["calibrate", "caf.json", "in.json"]).what == "calibrate"


def test_warm_command_parser_leaves_a_job_nothing_to_compile(monkeypatch):
    """After the server's warm parse, a job's parse compiles no regular expression (argparse's patterns come
    from re's cache, which the forked job inherits); the warm parse leaves no state in later parses."""
    import re
    import re._compiler as re_compiler

    from b2luca.runners import native_job

    re.purge()
    native_job.command_parser.cache_clear()
    native_job.warm_command_parser()
    compiled: list[object] = []
    original = re_compiler.compile
    monkeypatch.setattr(re_compiler, "compile", lambda *a, **k: compiled.append(a[0]) or original(*a, **k))
    args = native_job.command_parser().parse_args(["validate", "s.py", "job", "in.json", "v.json"])
    assert native_job.command_parser().parse_args(["calibrate", "c.json", "i.json"]).what == "calibrate"
    assert args.reference == [] and compiled == []
    re.purge()  # without the warm parse the same parses compile patterns (what the test would miss otherwise)
    native_job.command_parser().parse_args(["calibrate", "c.json", "i.json"])
    assert compiled
