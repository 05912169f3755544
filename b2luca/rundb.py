"""Run database: the Belle II RunDB REST client, the synthetic source, and the CSV snapshot.

Both sources yield run records shaped like the RunDB REST API's answers with ``expand=true``
(``experiment, run, run_type, beam_energy, time_start, time_stop, detectors{...},
quality_expert{...}, statistics{lumi_recorded}``).  :func:`write_snapshot` flattens them to one CSV
row per run (nested keys joined with dots, e.g. ``detectors.magnet``), written atomically.
:func:`select_runs` applies a calibration's ``input_data_filters`` to a snapshot.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import pandas as pd

from .atomic import atomic_path
from .iov import ExpRun, IoV
from .errors import RunDBError

SNAPSHOT_COLUMNS = ["experiment", "run", "run_type", "beam_energy", "time_start", "time_stop",
                    "detectors.magnet", "quality_expert.overall", "statistics.lumi_recorded"]


# --- records -> CSV -------------------------------------------------------------------------------
def flatten_run(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten one nested run record: ``{"detectors": {"magnet": "On"}}`` -> ``{"detectors.magnet": "On"}``."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_run(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def records_to_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per run, sorted by (experiment, run); the main columns first."""
    rows = [flatten_run(r) for r in records]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=SNAPSHOT_COLUMNS)
    missing = [c for c in ("experiment", "run") if c not in frame]
    if missing:
        raise RunDBError(f"run records lack the key(s) {', '.join(missing)}")
    if frame.duplicated(["experiment", "run"]).any():
        dup = frame[frame.duplicated(["experiment", "run"], keep=False)][["experiment", "run"]].values.tolist()
        raise RunDBError(f"run records repeat experiment/run {dup[0]}")
    first = [c for c in SNAPSHOT_COLUMNS if c in frame]
    frame = frame[first + sorted(c for c in frame.columns if c not in first)]
    return frame.sort_values(["experiment", "run"]).reset_index(drop=True)


def write_snapshot(records: Iterable[Mapping[str, Any]], path: "str | Path") -> pd.DataFrame:
    """Write the CSV snapshot of ``records`` to ``path`` atomically and return the frame."""
    frame = records_to_frame(records)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return frame


def _field_count_problems(text: str, path: Path) -> list[str]:
    """Rows whose number of fields differs from the header's (pandas would drop or invent cells)."""
    problems: list[str] = []
    try:
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        if header is None:
            return [f"{path}: empty RunDB snapshot (not even a header)"]
        for row in reader:
            if row and len(row) != len(header):
                problems.append(f"{path}: line {reader.line_num}: expected {len(header)} fields like the header, "
                                f"got {len(row)}")
    except csv.Error as exc:
        problems.append(f"{path}: line {reader.line_num}: not valid CSV ({exc})")
    return problems


MAX_SNAPSHOT_PROBLEMS = 20  # problems listed for one snapshot (then "... and N more")


def read_snapshot(path: "str | Path") -> pd.DataFrame:
    """Read a CSV snapshot; every bad row is named by file, line and column, all in one error.

    ``experiment`` and ``run`` must be non-negative integers on every row, each (experiment, run) may
    appear once, and a snapshot with a header but no rows is an error of its own (an empty run range).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunDBError(f"{path}: RunDB snapshot not found (run `b2luca rundb CONFIG` first)") from None
    except OSError as exc:
        raise RunDBError(f"{path}: cannot read the RunDB snapshot ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise RunDBError(f"{path}: line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x})") from None
    problems = _field_count_problems(text, path)
    if problems:
        raise RunDBError("\n".join(problems[:MAX_SNAPSHOT_PROBLEMS]))
    try:
        frame = pd.read_csv(io.StringIO(text), dtype={"experiment": str, "run": str}, skip_blank_lines=False,
                            index_col=False)
    except Exception as exc:
        raise RunDBError(f"{path}: not a readable RunDB snapshot ({' '.join(str(exc).split())})") from None
    for column in ("experiment", "run"):
        if column not in frame:
            raise RunDBError(f"{path}: column {column!r} is missing")
    if frame.empty:
        raise RunDBError(f"{path}: RunDB snapshot has a header but no run rows (no runs in the bucket's range when it "
                         "was written; write it again with `b2luca rundb CONFIG`)")
    problems = []
    line = pd.Series(range(2, len(frame) + 2), index=frame.index)  # line 1 is the header
    for column in ("experiment", "run"):
        text = frame[column].fillna("").astype(str).str.strip()
        number = pd.to_numeric(text.where(text.str.fullmatch(r"\d{1,9}"), None), errors="coerce")
        for i in frame.index[number.isna()]:
            problems.append(f"{path}: line {line[i]}, column {frame.columns.get_loc(column) + 1} ({column}): expected "
                            f"a non-negative integer, got {text[i]!r}")
        frame[column] = number
    if not problems:
        frame = frame.astype({"experiment": "int64", "run": "int64"})
        keys = frame[["experiment", "run"]]
        for _, group in frame[keys.duplicated(keep=False)].groupby(["experiment", "run"]):
            kind = "repeated" if (group.astype(str).nunique() <= 1).all() else "conflicting"
            where = ", ".join(str(line[i]) for i in group.index)
            problems.append(f"{path}: lines {where}: {kind} rows for experiment {group['experiment'].iloc[0]} run "
                            f"{group['run'].iloc[0]}")
    if problems:
        more = len(problems) - MAX_SNAPSHOT_PROBLEMS
        raise RunDBError("\n".join(problems[:MAX_SNAPSHOT_PROBLEMS]) + (f"\n{path}: ... and {more} more" if more > 0
                                                                        else ""))
    return frame


# --- sources --------------------------------------------------------------------------------------
class SyntheticRunDB:
    """The runs of a simulated dataset (``<data>/runs.json`` written by ``b2luca simulate``)."""

    def __init__(self, runs_json: "str | Path") -> None:
        self.path = Path(runs_json)

    def runs(self, iov: IoV) -> list[dict[str, Any]]:
        """Run records whose (experiment, run) lies in ``iov``."""
        try:
            records = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise RunDBError(f"{self.path}: synthetic run list not found (run `b2luca simulate CONFIG`)") from None
        except json.JSONDecodeError as exc:
            raise RunDBError(f"{self.path}: not valid JSON ({exc})") from exc
        if not isinstance(records, list):
            raise RunDBError(f"{self.path}: expected a JSON list of run records")
        out = []
        for index, record in enumerate(records):
            try:
                exprun = ExpRun(int(record["experiment"]), int(record["run"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise RunDBError(f"{self.path}: record {index}: needs integer experiment and run ({exc})") from exc
            if iov.contains(exprun):
                out.append(record)
        return out


class RestRunDB:
    """The Belle II RunDB REST API: ``GET <url>/runs/?...&expand=true``, paginated with ``next``.

    The API key is read from the environment variable named by ``api_key_env`` at request time and
    only ever sent in the ``Authorization: Bearer`` header; it is never logged or put in errors.
    """

    def __init__(self, url: str, api_key_env: str, timeout: float = 30.0, session: Any = None) -> None:
        self.url = url.rstrip("/")
        self.api_key_env = api_key_env
        self.timeout = timeout
        self._session = session

    def _key(self) -> str:
        key = os.environ.get(self.api_key_env)
        if not key:
            raise RunDBError(f"RunDB API key: environment variable {self.api_key_env} is not set")
        return key

    def _pages(self, first_url: str, params: Mapping[str, Any]) -> Iterator[list[dict[str, Any]]]:
        import requests  # a python-gitlab dependency; imported here so the synthetic path never needs it

        session = self._session or requests.Session()
        headers = {"Authorization": f"Bearer {self._key()}", "Accept": "application/json"}
        url: str | None = first_url
        query: Mapping[str, Any] | None = params
        seen: set[str] = set()
        while url:
            if url in seen:
                raise RunDBError(f"RunDB pagination loops at {url}")
            seen.add(url)
            try:
                answer = session.get(url, params=query, headers=headers, timeout=self.timeout)
            except requests.RequestException as exc:
                raise RunDBError(f"RunDB request to {url} failed: {type(exc).__name__}") from None
            if answer.status_code in (401, 403):
                raise RunDBError(f"RunDB refused the API key from {self.api_key_env} (HTTP {answer.status_code})")
            if answer.status_code != 200:
                raise RunDBError(f"RunDB answered HTTP {answer.status_code} for {url}")
            try:
                body = answer.json()
                results, url = body["results"], body.get("next")
            except (ValueError, KeyError, TypeError) as exc:
                raise RunDBError(f"RunDB answer from {answer.url} is not a results/next page ({exc})") from None
            query = None  # 'next' already carries the query string
            yield results

    def runs(self, iov: IoV, run_type: str | None = None) -> list[dict[str, Any]]:
        """All run records of the IoV (one experiment range), following ``next`` links."""
        if iov.exp_high == -1 or iov.run_high == -1:
            raise RunDBError(f"RunDB query needs a closed run range, got IoV {iov}")
        params: dict[str, Any] = {"min_experiment": iov.exp_low, "max_experiment": iov.exp_high,
                                  "min_run": iov.run_low, "max_run": iov.run_high, "expand": "true"}
        if run_type:
            params["run_type"] = run_type
        records: list[dict[str, Any]] = []
        for page in self._pages(f"{self.url}/runs/", params):
            records.extend(page)
        return [r for r in records if iov.contains(ExpRun(int(r["experiment"]), int(r["run"])))]


# --- filters --------------------------------------------------------------------------------------
_QUALITY_GROUPS = {"Good Or Recoverable": {"Good", "Recoverable"}, "Good Shifter": {"Good"}}


def _filter_category(value: str) -> str:
    from .catalogue.prompt_api import current_vocabulary  # the catalogue owns the filter vocabulary

    category = current_vocabulary().category_of(value)
    if category is None:
        raise ValueError(f"unknown input data filter {value!r}")
    return category


def _column(frame: pd.DataFrame, *names: str) -> pd.Series | None:
    for name in names:
        if name in frame:
            return frame[name].astype(str)
    return None


def _matches(frame: pd.DataFrame, value: str) -> pd.Series:
    """Boolean mask of the runs that satisfy one (non-negated) filter value."""
    category = _filter_category(value)
    everything = pd.Series(True, index=frame.index)
    if category == "Data Tag":
        return everything  # selects files (the data-tag directory), not runs
    if category == "Magnet":
        if value == "Either":
            return everything
        column = _column(frame, "detectors.magnet", "magnet")
        if column is None:
            return everything
        return column.str.lower().isin({value.lower(), "true" if value == "On" else "false"})
    if category == "Beam Energy":
        column = _column(frame, "beam_energy", "energy")
        return everything if column is None else column == value
    if category == "Run Type":
        column = _column(frame, "run_type")
        return everything if column is None else column == value
    if category == "Data Quality Tag":
        column = _column(frame, "quality_expert.overall", "quality")
        if column is None:
            return everything
        accepted = _QUALITY_GROUPS.get(value, {value})
        return column.isin(accepted)
    return everything


def select_runs(snapshot: pd.DataFrame, filters: Sequence[str]) -> pd.DataFrame:
    """The runs of ``snapshot`` passing every filter (``NOT <value>`` negates one)."""
    mask = pd.Series(True, index=snapshot.index)
    for raw in filters:
        negate = raw.startswith("NOT ")
        value = raw[4:] if negate else raw
        hit = _matches(snapshot, value)
        mask &= ~hit if negate and _filter_category(value) != "Data Tag" else hit
    return snapshot[mask]


def data_tags(filters: Sequence[str], default: str) -> list[str]:
    """The data tags a filter list asks for (``Data Tag`` values); ``default`` when it names none."""
    tags = [f for f in filters if not f.startswith("NOT ") and _filter_category(f) == "Data Tag"]
    return tags or [default]


def source_for_config(cfg: Any) -> "SyntheticRunDB | RestRunDB":
    """The run source a bucket config names (synthetic: the simulated run list)."""
    if cfg.rundb.source == "rest":
        return RestRunDB(cfg.rundb.url, cfg.rundb.api_key_env, timeout=cfg.rundb.timeout)
    return SyntheticRunDB(Path(cfg.data.raw_directory) / "runs.json")


def snapshot_for_config(cfg: Any) -> pd.DataFrame:
    """Query the bucket's run source for its run range and write ``cfg.rundb.snapshot``."""
    records = source_for_config(cfg).runs(cfg.requested_iov)
    if not records:
        raise RunDBError(f"no runs in experiment {cfg.bucket.experiment}, runs {cfg.bucket.first_run}-"
                         f"{cfg.bucket.last_run} from the {cfg.rundb.source} RunDB")
    return write_snapshot(records, cfg.rundb.snapshot)
