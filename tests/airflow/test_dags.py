"""Specs as Airflow DAGs, checked through Airflow's own parser (a real DagBag)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import DAG, Asset

from operators import WeiflowNodeOperator
from tests.airflow.conftest import LOADER
from tests.conftest import EXAMPLES, REPO
from weiflow.airflow.bundle import GENERATED_MARK, SpecBundle, sync_dag_files
from weiflow.airflow.loader import load_dag, load_dags, spec_bundle_configured
from weiflow.airflow.mapping import PRIORITY_WEIGHTS, pool_for
from weiflow.dag import compile_file
from weiflow.errors import SpecError
from weiflow.spec.params import parse_param_value

BAD_DATASET = ('reads="events"', 'reads="event"')  # user_activity_report's 'load' module, line 27


def _bundle_bag(specs: Path, tmp_path: Path) -> tuple[SpecBundle, DagBag]:
    bundle = SpecBundle(name="weiflow", specs=str(specs), loader=str(LOADER))
    bundle.initialize()
    return bundle, DagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name="weiflow")


def _check_faithful(dag: DAG, spec_file: Path) -> None:
    """The DAG says what the compiled spec says: tasks, edges, params, assets, pools, queues."""
    compiled = compile_file(spec_file)
    spec = compiled.spec
    assert dag.dag_id == spec.name
    assert dag.catchup is False
    assert dag.description == (spec.description or None)
    assert dag.default_args["retries"] == spec.retries
    assert dag.default_args.get("owner") == spec.owner
    assert set(dag.tags) >= {"weiflow"}
    assert [task.task_id for task in dag.topological_sort()] == [node.id for node in compiled.nodes]
    assert {(u, t.task_id) for t in dag.tasks for u in t.upstream_task_ids} == {
        (u, node.id) for node in compiled.nodes for u in node.upstream
    }
    uri = {dataset.name: dataset.uri for dataset in spec.datasets}
    for node in compiled.nodes:
        task = dag.get_task(node.id)
        assert isinstance(task, WeiflowNodeOperator)
        assert (task.spec, task.node) == (str(spec_file.resolve()), node.id)
        assert task.pool == pool_for(spec.priority)
        assert task.priority_weight == PRIORITY_WEIGHTS[spec.priority]
        assert task.queue == (node.spec.element.get("resources") or "default")
        assert task.retries == (node.retries if node.retries is not None else spec.retries)
        assert [a.name for a in task.outlets] == [uri[name] for name in node.writes]
        assert [a.name for a in task.inlets] == [uri[name] for name in node.reads if name not in node.writes]
    assert list(dag.params) == [p.name for p in spec.params]
    for param in spec.params:
        schema = dag.params.get_param(param.name).schema
        value = dag.params.get_param(param.name).value
        if param.default is not None and "$" in param.default:
            assert value is None and "null" in schema["type"]
        else:
            assert param.default is not None
            expected = parse_param_value(param.type, param.default)
            assert value == (expected.isoformat() if param.type == "date" else expected)  # type: ignore[union-attr]


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.xml")))
def test_every_example_loads_through_the_spec_bundle(
    example: str, spec_dir: Callable[..., Path], tmp_path: Path
) -> None:
    specs = spec_dir(example)
    _, bag = _bundle_bag(specs, tmp_path)
    assert bag.import_errors == {}
    (dag,) = bag.dags.values()
    _check_faithful(dag, specs / example)


def test_the_dags_folder_loader_builds_every_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIFLOW_SPECS", str(EXAMPLES))
    bag = DagBag(dag_folder=REPO / "dags")
    assert bag.import_errors == {}
    names = {compile_file(path).name: path for path in EXAMPLES.glob("*.xml")}
    assert set(bag.dags) == set(names)
    for dag_id, path in names.items():
        _check_faithful(bag.dags[dag_id], path)


def test_feed_ctr_maps_priority_resources_and_params() -> None:
    dag = load_dag(EXAMPLES / "feed_ctr.xml", operator=WeiflowNodeOperator)
    features = dag.get_task("features")
    assert (features.pool, features.priority_weight, features.weight_rule) == ("weiflow_high", 100, "absolute")
    assert features.queue == "large"  # resources="large"
    assert dag.get_task("train").retries == 1  # the pipeline's retries="1"
    assert set(dag.tags) == {"weiflow", "ctr", "feed"}
    assert dag.default_args["owner"] == "ranking"
    day, rate, steps = (dag.params.get_param(n) for n in ("day", "sample_rate", "train_steps"))
    assert day.value is None and day.schema == {"type": ["null", "string"], "format": "date"}
    assert "${ds}" in (day.description or "")
    assert (rate.value, rate.schema["type"], rate.description) == (1.0, "number", "fraction of negatives kept")
    assert (steps.value, steps.schema["type"]) == (2000, "integer")
    # The samples asset links the producing and the consuming task, by the dataset's URI template.
    samples = Asset(name="${storage}/feed_ctr/samples/${day}")
    assert samples in dag.get_task("features").outlets and samples in dag.get_task("train").inlets
    assert dag.schedule == "@daily" and dag.timetable.expression == "0 0 * * *"


def test_a_bad_spec_is_an_import_error_of_its_own(spec_dir: Callable[..., Path], tmp_path: Path) -> None:
    text = (EXAMPLES / "user_activity_report.xml").read_text().replace(*BAD_DATASET)
    renamed = text.replace('name="user_activity_report"', 'name="broken_report"')
    specs = spec_dir("feed_ctr.xml", "user_activity_report.xml", extra={"broken.xml": renamed})
    line = next(i for i, row in enumerate(renamed.splitlines(), 1) if BAD_DATASET[1] in row)
    col = renamed.splitlines()[line - 1].index(BAD_DATASET[1]) + 1
    bundle, bag = _bundle_bag(specs, tmp_path)
    assert set(bag.dags) == {"feed_ctr", "user_activity_report"}  # the others still load
    assert list(bag.import_errors) == ["broken.py"]  # relative to the bundle, like the UI shows it
    error = bag.import_errors["broken.py"]
    assert f"broken.xml:{line}:{col}: error: module 'load': unknown dataset 'event'" in error
    assert "did you mean 'events'?" in error

    (specs / "broken.xml").write_text(renamed.replace(BAD_DATASET[1], BAD_DATASET[0]))  # fixed
    (specs / "feed_ctr.xml").unlink()  # and a spec removed
    bundle.refresh()
    bag = DagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name="weiflow")
    assert bag.import_errors == {} and set(bag.dags) == {"broken_report", "user_activity_report"}


def test_the_dags_folder_loader_skips_a_bad_spec_and_logs_it(
    spec_dir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    text = (EXAMPLES / "user_activity_report.xml").read_text().replace(*BAD_DATASET)
    specs = spec_dir("feed_ctr.xml", extra={"broken.xml": text})
    monkeypatch.setenv("WEIFLOW_SPECS", str(specs))
    with caplog.at_level(logging.ERROR, logger="weiflow.airflow"):
        bag = DagBag(dag_folder=REPO / "dags")
    assert bag.import_errors == {}  # raising would drop feed_ctr too, and mark it stale
    assert set(bag.dags) == {"feed_ctr"}
    assert "broken.xml:27:" in caplog.text and "unknown dataset 'event'" in caplog.text


def test_folder_loading_reports_duplicate_pipeline_names(spec_dir: Callable[..., Path]) -> None:
    copy = (EXAMPLES / "user_activity_report.xml").read_text()
    specs = spec_dir("user_activity_report.xml", extra={"zz_copy.xml": copy})
    result = load_dags(specs, operator=WeiflowNodeOperator)
    assert set(result.dags) == {"user_activity_report"}
    assert "already defined by" in result.failures[str(specs / "zz_copy.xml")]


def test_folder_loading_for_one_dag_compiles_only_that_spec(spec_dir: Callable[..., Path]) -> None:
    text = (EXAMPLES / "user_activity_report.xml").read_text().replace(*BAD_DATASET)
    broken = text.replace('name="user_activity_report"', 'name="broken_report"')
    specs = spec_dir("user_activity_report.xml", extra={"broken.xml": broken, "garbled.xml": "<pipeline name='x"})
    result = load_dags(specs, operator=WeiflowNodeOperator, only="user_activity_report")
    assert set(result.dags) == {"user_activity_report"}
    # broken.xml names another pipeline, so it was not compiled; garbled.xml may be the one, so it was.
    assert list(result.failures) == [str(specs / "garbled.xml")]
    result = load_dags(specs, operator=WeiflowNodeOperator, only="broken_report")
    assert result.dags == {} and sorted(result.failures) == [str(specs / "broken.xml"), str(specs / "garbled.xml")]


SCHEDULED_WITHOUT_DEFAULT = """<pipeline xmlns="urn:weiflow:pipeline:1" name="needs_input" schedule="@daily">
  <params>
    <param name="table" type="string"/>
  </params>
  <node id="n" engine="python"><module id="m" type="call" callable="activity_steps:load_events"/></node>
</pipeline>
"""


def test_a_scheduled_pipeline_needs_defaults(make_spec: Callable[..., Path]) -> None:
    path = make_spec(SCHEDULED_WITHOUT_DEFAULT)
    with pytest.raises(SpecError, match=r"spec.xml:3:5: error: param 'table' has no default") as info:
        load_dag(path, operator=WeiflowNodeOperator)
    assert "drop the schedule" in str(info.value)
    unscheduled = load_dag(
        make_spec(SCHEDULED_WITHOUT_DEFAULT.replace(' schedule="@daily"', "")), operator=WeiflowNodeOperator
    )
    param = unscheduled.params.get_param("table")
    assert unscheduled.schedule is None and param.schema == {"type": "string"}
    assert not param.has_value  # the trigger form requires it


PRODUCER = """<pipeline xmlns="urn:weiflow:pipeline:1" name="producer" schedule="@daily">
  <datasets><dataset name="out" uri="${storage}/shared/${ds}" format="files"/></datasets>
  <node id="make"><module id="m" type="call" callable="steps:make" writes="out"/></node>
</pipeline>
"""
CONSUMER = """<pipeline xmlns="urn:weiflow:pipeline:1" xmlns:airflow="urn:weiflow:airflow:1" name="consumer"
          airflow:schedule-on="{names}"{schedule}>
  <datasets><dataset name="in" uri="${{storage}}/shared/${{ds}}" format="files" external="true"/></datasets>
  <node id="use"><module id="m" type="call" callable="steps:use" reads="in"/></node>
</pipeline>
"""


def _python_node(text: str) -> str:
    return text.replace("<node id=", '<node engine="python" id=')


def test_a_pipeline_scheduled_on_another_pipelines_dataset(make_spec: Callable[..., Path]) -> None:
    producer = load_dag(make_spec(_python_node(PRODUCER), "producer.xml"), operator=WeiflowNodeOperator)
    consumer = load_dag(
        make_spec(_python_node(CONSUMER.format(names="in", schedule="")), "consumer.xml"),
        operator=WeiflowNodeOperator,
    )
    (outlet,) = producer.get_task("make").outlets
    assert outlet == Asset(name="${storage}/shared/${ds}")
    assert list(consumer.timetable.asset_condition.objects) == [outlet]  # runs when the producer updates it


@pytest.mark.parametrize(
    ("names", "schedule", "message"),
    [
        ("nope", "", "airflow:schedule-on names 'nope', which no node of this pipeline reads"),
        ("in", ' schedule="@daily"', "airflow:schedule-on and schedule='@daily' both set"),
    ],
)
def test_bad_asset_schedules_name_the_spec(
    make_spec: Callable[..., Path], names: str, schedule: str, message: str
) -> None:
    text = _python_node(CONSUMER.format(names=names, schedule=schedule))
    path = make_spec(text, "consumer.xml")
    second = text.splitlines()[1]
    where = f"2:{second.index('schedule=') + 1}" if schedule else "1:1"  # the attribute, else <pipeline>
    with pytest.raises(SpecError, match=f"consumer.xml:{where}: error: {message}"):
        load_dag(path, operator=WeiflowNodeOperator)


def test_generated_dag_files_are_kept_in_step_with_the_specs(tmp_path: Path) -> None:
    specs, target = tmp_path / "specs", tmp_path / "files"
    specs.mkdir()
    (specs / "a.xml").write_text("<pipeline name='a'/>")
    (specs / "b.xml").write_text("<pipeline name='b'/>")
    target.mkdir()
    (target / "mine.py").write_text("# somebody else's DAG file\n")
    assert [p.name for p in sync_dag_files(specs, LOADER, target)] == ["a.py", "b.py"]
    text = (target / "a.py").read_text()
    assert text.startswith(GENERATED_MARK) and "airflow" in text.lower() and "dag" in text  # Airflow's safe mode
    assert repr(str((specs / "a.xml").resolve())) in text and repr(str(LOADER)) in text
    assert "# <pipeline name='a'/>" in text  # the spec itself, for the UI's Code tab
    before = (target / "a.py").stat().st_mtime_ns
    (specs / "b.xml").unlink()
    sync_dag_files(specs, LOADER, target)
    assert sorted(p.name for p in target.iterdir()) == ["a.py", "mine.py"]  # foreign files stay
    assert (target / "a.py").stat().st_mtime_ns == before  # unchanged files are not rewritten
    (specs / "a.xml").write_text("<pipeline name='a2'/>")
    sync_dag_files(specs, LOADER, target)
    assert "# <pipeline name='a2'/>" in (target / "a.py").read_text()  # a changed spec is a new version
    with pytest.raises(FileNotFoundError, match="spec folder"):
        sync_dag_files(tmp_path / "unmounted", LOADER, target)
    assert (target / "a.py").exists()  # a missing folder deletes nothing


def test_the_dags_folder_loader_stands_down_when_the_bundle_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not spec_bundle_configured()
    monkeypatch.setenv(
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST",
        '[{"name": "weiflow", "classpath": "weiflow.airflow.bundle.SpecBundle", "kwargs": {"specs": "x"}}]',
    )
    monkeypatch.setenv("WEIFLOW_SPECS", str(EXAMPLES))
    assert spec_bundle_configured()
    bag = DagBag(dag_folder=REPO / "dags")
    assert bag.import_errors == {} and bag.dags == {}  # the bundle defines them; twice would flip-flop
