"""The example specs compile to the DAGs their authors meant (asserted structurally)."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pytest

from tests.conftest import EXAMPLES
from weiflow.dag import Edge, InputRef, compile_file, dag_to_dict


def test_feed_ctr_outer_dag_follows_datasets() -> None:
    dag = compile_file(EXAMPLES / "feed_ctr.xml")
    assert [n.id for n in dag.nodes] == ["features", "train", "deploy"]
    assert [n.engine for n in dag.nodes] == ["spark", "tensorflow", "deploy"]
    assert set(dag.edges) == {
        Edge("features", "train", "dataset:samples"),
        Edge("features", "train", "dataset:holdout"),
        Edge("train", "deploy", "dataset:model"),
    }
    assert dag.node("train").upstream == ["features"]
    assert dag.node("deploy").upstream == ["train"]
    assert dag.warnings == []


def test_feed_ctr_inner_dag_and_ports() -> None:
    features = compile_file(EXAMPLES / "feed_ctr.xml").node("features")
    order = [m.id for m in features.modules]
    assert order == ["read", "clean", "down", "dedup", "feats", "parts", "w_train", "w_holdout"]
    by_id = {m.id: m for m in features.modules}
    assert by_id["w_train"].inputs == [InputRef("parts", "train")]
    assert by_id["w_holdout"].inputs == [InputRef("parts", "holdout")]
    assert features.reads == ["events"] and features.writes == ["samples", "holdout"]
    assert [c.get("fn") for c in by_id["feats"].spec.children] == [
        "piecewise",
        "pickcat",
        "pickcat",
        "pickcat",
        "normalize",
        "normalize",
        "descartes",
        "combinehash",
        "combinehash",
    ]


def test_dataset_producers_and_consumers() -> None:
    dag = compile_file(EXAMPLES / "feed_ctr.xml")
    assert (dag.producers["samples"].node, dag.producers["samples"].module) == ("features", "w_train")
    assert [(u.node, u.module) for u in dag.consumers["holdout"]] == [("train", "eval")]
    assert "events" not in dag.producers  # external


def test_sync_example_syncs_first() -> None:
    dag = compile_file(EXAMPLES / "sync_then_train.xml")
    assert [n.id for n in dag.nodes] == ["sync", "features", "train"]
    assert dag.node("sync").modules[0].type.name == "sync"
    assert dag.node("sync").reads == ["landed_clicks"] and dag.node("sync").writes == ["clicks"]


def test_python_example_is_three_python_nodes() -> None:
    dag = compile_file(EXAMPLES / "user_activity_report.xml")
    assert [(n.id, n.engine) for n in dag.nodes] == [("ingest", "python"), ("stats", "python"), ("report", "python")]
    assert [m.id for m in dag.node("stats").modules] == ["load", "agg", "save"]


def test_depends_and_spec_order_tie_break(make_spec) -> None:  # type: ignore[no-untyped-def]
    path = make_spec(
        """
  <node id="c" engine="python" depends="a"><module id="m" type="call" callable="x:y"/></node>
  <node id="b" engine="python"><module id="m" type="call" callable="x:y"/></node>
  <node id="a" engine="python"><module id="m" type="call" callable="x:y"/></node>
"""
    )
    dag = compile_file(path)
    # b and a are both ready first; spec order puts b before a; c waits for a.
    assert [n.id for n in dag.nodes] == ["b", "a", "c"]
    assert dag.edges == [Edge("a", "c", "depends")]


@pytest.mark.parametrize("name", ["feed_ctr.xml", "user_activity_report.xml", "sync_then_train.xml"])
def test_compiled_json_matches_its_published_schema(name: str) -> None:
    document = dag_to_dict(compile_file(EXAMPLES / name))
    schema = json.loads(resources.files("weiflow.schemas").joinpath("dag-1.schema.json").read_text())
    jsonschema.validate(document, schema)
    assert document["schema"] == "weiflow.dag/1"
    # The JSON round-trips: nothing in it is a Python-only type.
    assert json.loads(json.dumps(document)) == document


def test_compiled_json_content() -> None:
    document = dag_to_dict(compile_file(EXAMPLES / "feed_ctr.xml"))
    assert document["pipeline"]["priority"] == "high"
    assert document["pipeline"]["tags"] == ["ctr", "feed"]
    train = document["nodes"][1]
    assert train["config"]["cluster"] == {"ps": "1", "workers": "2", "backend": "local"}
    assert train["modules"][0]["attrs"]["steps"] == "${train_steps}"  # resolved at run time
    features = document["nodes"][0]
    assert features["config"]["conf"] == {"spark.sql.shuffle.partitions": "64", "spark.ui.showConsoleProgress": "false"}
    samples = next(d for d in document["datasets"] if d["name"] == "samples")
    assert samples["producer"] == {"node": "features", "module": "w_train"}
    assert samples["consumers"] == [{"node": "train", "module": "fit"}]


def test_query_text_survives_a_comment_inside_it(make_spec) -> None:  # type: ignore[no-untyped-def]
    path = make_spec(
        """
  <datasets><dataset name="e" uri="file:///data/e" format="parquet" external="true"/></datasets>
  <node id="n" engine="spark">
    <module id="read" type="read" dataset="e"/>
    <module id="q" type="sql" input="read"><query>SELECT uid <!-- the user --> FROM read WHERE x &lt; 3</query></module>
  </node>
"""
    )
    query = compile_file(path).node("n").modules[1].spec.children[0]
    assert query.text == "SELECT uid  FROM read WHERE x < 3"
