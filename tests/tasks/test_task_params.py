"""Task parameters: computed once per task class (issue 15: luigi walks ``dir(cls)`` at every instantiation)."""

from __future__ import annotations

import luigi

from b2luca.tasks import graph


def test_task_classes_list_luigis_parameters_once(monkeypatch):
    """Every bucket task class lists exactly luigi's parameters, in luigi's order; repeated calls, ``req`` and new
    instances do not walk the class again; a caller changing the list it got changes nothing."""
    classes = [graph.PullSettings, graph.MakeRunDB, graph.CopyLocalPayloads, graph.CalibrationTask, graph.GroupTask,
               graph.CdstProduction, graph.ArchiveLogs, graph.Bucket]
    for cls in classes:
        assert cls.get_params() == luigi.Task.get_params.__func__(cls), cls  # type: ignore[attr-defined]
    assert [n for n, _ in graph.GroupTask.get_params()] == ["config_path", "stage", "level"]
    walks = []
    original = luigi.Task.get_params.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(luigi.Task, "get_params", classmethod(lambda cls: walks.append(cls) or original(cls)))
    task = graph.CalibrationTask(config_path="/x/bucket.yaml", name="BeamSpot")
    other = graph.CalibrationTask.req(task, name="CDCTimeZeros")
    assert (other.config_path, other.name) == ("/x/bucket.yaml", "CDCTimeZeros")
    graph.CalibrationTask.get_params().clear()
    assert [n for n, _ in graph.CalibrationTask.get_params()] == ["config_path", "name"]
    assert walks == []
