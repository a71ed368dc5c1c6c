"""DC-ASGD: the update rule on known numbers (dense and sparse), its checkpointed slot, clear errors, and
training through a pipeline on 1 PS + 2 workers and in a single process."""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO
from tests.engines.tensorflow.samples import write_samples
from weiflow.config import load_settings
from weiflow.dag import check_file, compile_file
from weiflow.engines import deploy, python, spark
from weiflow.engines import tensorflow as tf_engine
from weiflow.engines.tensorflow import executor as tf_executor
from weiflow.engines.tensorflow.dcasgd import DelayCompensatedSGD, require_reads
from weiflow.engines.tensorflow.models import CANNED, FeatureInput, Read
from weiflow.errors import ModuleFailed
from weiflow.registry import Plugin, Registry
from weiflow.runtime import RunContext, run_node, run_pipeline
from weiflow.tracking import EventKind, MemoryTracker

pytestmark = pytest.mark.slow

W = [1.0, 2.0, -1.0]  # the weights on the PS when the gradient arrives
W_BAK = [0.5, 2.0, 0.0]  # what the worker read when it computed the gradient
G = [0.2, -0.5, 1.0]


def apply_dense(optimizer: Any, var: Any, grad: list[float], backup: list[float]) -> None:
    optimizer.apply_compensated([(tf.constant(grad), var)], [Read(var, tf.constant(backup))])


# --- the update rule ------------------------------------------------------------------------


def test_dense_constant_lambda_compensates_each_element_by_g_squared_times_the_drift() -> None:
    var = tf.Variable(W)
    apply_dense(DelayCompensatedSGD(0.1, 2.0, adaptive=False), var, G, W_BAK)
    # g + 2 g*g (w - w_bak) = [0.2 + 2*0.04*0.5, -0.5 + 0, 1 - 2*1*1] = [0.24, -0.5, -1.0]
    np.testing.assert_allclose(var.numpy(), [1.0 - 0.024, 2.0 + 0.05, -1.0 + 0.1], rtol=1e-6)


def test_dense_adaptive_lambda_divides_by_the_root_mean_square_updated_with_this_gradient() -> None:
    var = tf.Variable(W)
    optimizer = DelayCompensatedSGD(0.1, 1.0, adaptive=True, decay=0.75)
    apply_dense(optimizer, var, G, W_BAK)
    # m = 0.25 g*g, so lambda0 g*g / sqrt(m) = 2|g|: g + 2|g| (w - w_bak) = [0.4, -0.5, -1.0]
    np.testing.assert_allclose(var.numpy(), [1.0 - 0.04, 2.0 + 0.05, -1.0 + 0.1], rtol=1e-5)
    np.testing.assert_allclose(optimizer.get_slot(var, "mean_square").numpy(), [0.01, 0.0625, 0.25], rtol=1e-6)


def test_in_a_traced_step_the_drift_is_what_landed_between_the_forward_read_and_the_update() -> None:
    var = tf.Variable(W_BAK)
    optimizer = DelayCompensatedSGD(0.1, 2.0, adaptive=False)

    @tf.function
    def step() -> None:
        backup = tf.convert_to_tensor(var)  # the forward pass's read
        var.assign_add(tf.constant(W) - tf.constant(W_BAK))  # another worker's update lands meanwhile
        optimizer.apply_compensated([(tf.constant(G), var)], [Read(var, backup)])

    step()
    # the same numbers as with w and w_bak given directly: the update read w after the gradient came
    np.testing.assert_allclose(var.numpy(), [1.0 - 0.024, 2.0 + 0.05, -1.0 + 0.1], rtol=1e-6)


@pytest.mark.parametrize(
    "read_ids",
    [[2, 0, 2], [[0, 2], [2, 0]]],
    ids=["rows-as-the-gradient-lists-them", "rows-in-another-order-and-shape"],
)
def test_sparse_compensates_only_the_gathered_rows_summing_repeated_ids(read_ids: list[Any]) -> None:
    before = tf.constant([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    table = tf.Variable(before)
    backup = tf.gather(table, read_ids)  # what the forward pass gathered
    table.assign_add([[0.5, -0.5], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # other workers' updates since
    grad = tf.IndexedSlices(tf.constant([[0.1, 0.2], [1.0, -1.0], [0.3, 0.2]]), tf.constant([2, 0, 2], tf.int64))
    optimizer = DelayCompensatedSGD(0.1, 2.0, adaptive=False)
    optimizer.apply_compensated([(grad, table)], [Read(table, backup, tf.constant(read_ids, tf.int64))])
    # row 0: g [1, -1], drift [0.5, -0.5]: g + 2 g*g drift = [2, -2]
    # row 2: g [0.4, 0.4] (two rows summed), drift [1, 0]: [0.4 + 2*0.16, 0.4] = [0.72, 0.4]
    expected = [[0.5 - 0.2, -0.5 + 0.2], [1.0, 1.0], [3.0 - 0.072, 2.0 - 0.04], [3.0, 3.0]]
    np.testing.assert_allclose(table.numpy(), expected, rtol=1e-6)


def test_sparse_adaptive_moves_the_mean_square_of_the_touched_rows_only() -> None:
    table = tf.Variable([[1.0], [1.0], [1.0]])
    backup = tf.gather(table, [1])
    table.assign_add([[0.0], [0.5], [0.0]])
    optimizer = DelayCompensatedSGD(0.1, 1.0, adaptive=True, decay=0.75)
    grad = tf.IndexedSlices(tf.constant([[0.4]]), tf.constant([1], tf.int64))
    optimizer.apply_compensated([(grad, table)], [Read(table, backup, tf.constant([1], tf.int64))])
    # m = 0.25 * 0.16 = 0.04; lambda0 g*g / sqrt(m) = 0.16 / 0.2 = 0.8; step 0.1 * (0.4 + 0.8 * 0.5)
    np.testing.assert_allclose(table.numpy(), [[1.0], [1.5 - 0.08], [1.0]], rtol=1e-5)
    np.testing.assert_allclose(optimizer.get_slot(table, "mean_square").numpy(), [[0.0], [0.04], [0.0]], rtol=1e-6)


@pytest.mark.parametrize("adaptive", [True, False])
def test_without_drift_or_with_lambda_zero_it_is_plain_sgd(adaptive: bool) -> None:
    sgd, same, zero = tf.Variable(W), tf.Variable(W), tf.Variable(W)
    tf.compat.v1.train.GradientDescentOptimizer(0.1).apply_gradients([(tf.constant(G), sgd)])
    apply_dense(DelayCompensatedSGD(0.1, 2.0, adaptive=adaptive), same, G, W)  # w == w_bak: one worker
    apply_dense(DelayCompensatedSGD(0.1, 0.0, adaptive=adaptive), zero, G, W_BAK)
    np.testing.assert_array_equal(same.numpy(), sgd.numpy())
    np.testing.assert_array_equal(zero.numpy(), sgd.numpy())


def test_a_canned_model_step_in_one_process_equals_an_sgd_step() -> None:
    inputs = [FeatureInput("city", 21), FeatureInput("age_b", 6), FeatureInput("ctr")]
    features = {
        "city": tf.constant([3, 3, 7, 20], tf.int64),
        "age_b": tf.constant([0, 5, 2, 2], tf.int64),
        "ctr": tf.constant([0.1, -1.0, 2.0, 0.0]),
    }
    labels = tf.constant([1.0, 0.0, 1.0, 0.0])
    build = CANNED["wide_deep"]
    compensated, plain = build(inputs, {"hidden-units": [4]}), build(inputs, {"hidden-units": [4]})
    dc, sgd = DelayCompensatedSGD(0.5, 2.0), tf.compat.v1.train.GradientDescentOptimizer(0.5)

    def loss_of(logits: Any) -> Any:
        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))

    @tf.function
    def steps() -> None:
        for _ in range(3):
            with tf.GradientTape() as tape:
                logits, reads = compensated.call_with_reads(features)
                loss = loss_of(logits)
            variables = compensated.trainable_variables
            dc.apply_compensated(zip(tape.gradient(loss, variables), variables, strict=True), reads)
            with tf.GradientTape() as tape:
                loss = loss_of(plain(features))
            variables = plain.trainable_variables
            sgd.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))

    steps()
    for mine, theirs in zip(compensated.trainable_variables, plain.trainable_variables, strict=True):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-7)
    assert not np.array_equal(compensated.table.numpy(), build(inputs, {"hidden-units": [4]}).table.numpy())


def test_the_mean_square_slot_is_checkpointed_and_restored(tmp_path: Path) -> None:
    def trained(optimizer: Any, var: Any) -> Any:
        @tf.function
        def step() -> None:  # as the trainer does: the slot is first made while tracing
            optimizer.apply_compensated([(tf.constant(G), var)], [Read(var, tf.convert_to_tensor(var))])

        return step

    var, optimizer = tf.Variable(W), DelayCompensatedSGD(0.1, 1.0, decay=0.75)
    trained(optimizer, var)()
    saved = tf.train.Checkpoint(v=var, optimizer=optimizer).save(str(tmp_path / "ckpt"))
    first = optimizer.get_slot(var, "mean_square").numpy()
    np.testing.assert_allclose(first, 0.25 * np.square(G), rtol=1e-6)

    var2, optimizer2 = tf.Variable([0.0, 0.0, 0.0]), DelayCompensatedSGD(0.1, 1.0, decay=0.75)
    tf.train.Checkpoint(v=var2, optimizer=optimizer2).restore(saved).assert_existing_objects_matched()
    trained(optimizer2, var2)()
    # restored, then moved once more: 0.75 m + 0.25 g*g
    moved = 0.75 * first + 0.25 * np.square(G)
    np.testing.assert_allclose(optimizer2.get_slot(var2, "mean_square").numpy(), moved, rtol=1e-6)


# --- clear errors ---------------------------------------------------------------------------


def test_a_model_without_call_with_reads_is_refused_naming_the_fix() -> None:
    from tests.engines.tensorflow.custom_model import build

    model = build([FeatureInput("city", 21)], {})
    with pytest.raises(TypeError, match=r"model 'fm' \(FactorizationMachine\) .* call_with_reads\(features\)"):
        require_reads(model, "fm")
    require_reads(CANNED["dnn"]([FeatureInput("city", 21)], {}), "dnn")


def test_a_variable_without_a_read_is_refused() -> None:
    read, unread = tf.Variable([1.0], name="read"), tf.Variable([1.0], name="unread")
    grads = [(tf.constant([1.0]), read), (tf.constant([1.0]), unread)]
    with pytest.raises(ValueError, match="reported no read of unread:0; call_with_reads must return a Read of every"):
        DelayCompensatedSGD(0.1, 1.0).apply_compensated(grads, [Read(read, tf.constant([1.0]))])


def test_a_sparse_gradient_outside_the_gathered_rows_is_refused() -> None:
    table = tf.Variable([[1.0], [2.0], [3.0]], name="table")
    grad = tf.IndexedSlices(tf.constant([[1.0]]), tf.constant([2], tf.int64))
    read = Read(table, tf.gather(table, [0]), tf.constant([0], tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="touches rows its Read does not hold"):
        DelayCompensatedSGD(0.1, 1.0).apply_compensated([(grad, table)], [read])


def spec(samples: Path, cluster: str, train: str, rest: str = "", params: str = "") -> str:
    return textwrap.dedent(f"""\
        <pipeline xmlns="urn:weiflow:pipeline:1" name="dc">
          <params>{params}</params>
          <datasets>
            <dataset name="samples" uri="file://{samples}/samples" format="parquet" external="true"/>
            <dataset name="holdout" uri="file://{samples}/holdout" format="parquet" external="true"/>
          </datasets>
          <node id="train" engine="tensorflow">
            {cluster}
            <module id="fit" type="train" dataset="samples" model="wide_deep" {train}/>
            {rest}
          </node>
        </pipeline>
        """)


@pytest.mark.parametrize(
    ("attrs", "message", "hint"),
    [
        ('optimizer="dc-asgd" dc-lambda="-1"', "module 'fit': dc-lambda: must be at least 0, got -1", None),
        (
            'optimizer="dc-asgd" dc-variant="fast"',
            "module 'fit': dc-variant: expected one of adaptive, constant, got 'fast'",
            None,
        ),
        (
            'optimizer="dc-asgd" dc-mean-square-decay="1"',
            "module 'fit': dc-mean-square-decay: must be at most 0.999, got 1",
            None,
        ),
        (
            'optimizer="adam" dc-lambda="0.5"',
            "module 'fit': dc-lambda applies only to optimizer=\"dc-asgd\", not 'adam'",
            'set optimizer="dc-asgd", or remove dc-lambda',
        ),
        (
            'dc-variant="constant"',
            "module 'fit': dc-variant applies only to optimizer=\"dc-asgd\", not 'adagrad'",
            'set optimizer="dc-asgd", or remove dc-variant',
        ),
        (
            'optimizer="dc-asgd" dc-variant="constant" dc-mean-square-decay="0.9"',
            "module 'fit': dc-mean-square-decay applies only to dc-variant=\"adaptive\"",
            'remove it, or set dc-variant="adaptive"',
        ),
    ],
    ids=["negative-lambda", "unknown-variant", "decay-1", "lambda-with-adam", "without-dc-asgd", "decay-constant"],
)
def test_invalid_dc_attributes_fail_validation_with_the_place_and_the_fix(
    tmp_path: Path, make_spec: Callable[..., Path], attrs: str, message: str, hint: str | None
) -> None:
    path = make_spec(spec(tmp_path, "", f'steps="5" {attrs}'))
    errors = [d for d in check_file(path) if d.is_error]
    assert [d.message for d in errors] == [message]
    assert errors[0].line == 9
    if hint is not None:
        assert errors[0].hint == hint


def test_a_templated_optimizer_that_is_not_dc_asgd_fails_before_any_process_starts(
    tmp_path: Path, make_spec: Callable[..., Path]
) -> None:
    write_samples(tmp_path / "samples", 100, files=1)
    path = make_spec(
        spec(
            tmp_path,
            '<cluster ps="0"/>',
            'steps="5" optimizer="${opt}" dc-lambda="0.5"',
            params='<param name="opt" default="sgd"/>',
        )
    )
    tracker = MemoryTracker()
    run = RunContext.create(compile_file(path), settings=load_settings(), tracker=tracker)
    message = 'dc-lambda applies only to optimizer="dc-asgd", not \'sgd\': set optimizer="dc-asgd", or remove'
    with pytest.raises(ModuleFailed, match=re.escape(message)):
        run_node(run, "train")
    assert not [e for e in tracker.events if e.kind is EventKind.CLUSTER_STARTED]


# --- training through a pipeline ------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dc-data")
    write_samples(root / "samples", 20_000, files=4, seed=0)
    write_samples(root / "holdout", 4_000, files=1, seed=1)
    return root


def train_and_evaluate(make_spec: Callable[..., Path], data: Path, cluster: str, train: str) -> dict[str, Any]:
    path = make_spec(
        spec(
            data,
            cluster,
            train,
            '<module id="eval" type="evaluate" input="fit" dataset="holdout" metrics="auc,logloss"/>',
        )
    )
    tracker = MemoryTracker()
    run = RunContext.create(compile_file(path), settings=load_settings(), tracker=tracker, run_id="dc1")
    result = run_pipeline(run)
    assert result.succeeded, result.errors
    return {e.module: e.detail for e in tracker.events if e.kind is EventKind.METRICS}


@pytest.mark.integration
def test_dc_asgd_on_one_ps_and_two_workers_learns_the_signal_and_checkpoints_its_slots(
    data: Path, make_spec: Callable[..., Path], isolated_var: Path
) -> None:
    found = train_and_evaluate(
        make_spec,
        data,
        '<cluster ps="1" workers="2" backend="local"/>',
        'optimizer="dc-asgd" learning-rate="0.5" steps="300" batch-size="256" hidden-units="16"',
    )
    assert found["fit"]["steps"] == 300 and found["fit"]["workers"] == 2
    assert found["eval"]["auc"] >= 0.75, found["eval"]
    assert 0 < found["eval"]["logloss"] < 0.69

    checkpoints = isolated_var / "tensorflow" / "dc" / "dc1" / "train" / "fit" / "checkpoints"
    names = [name for name, _ in tf.train.list_variables(tf.train.latest_checkpoint(str(checkpoints)))]
    slots = [
        name for name in names if "OPTIMIZER_SLOT" in name and name.endswith("/mean_square/.ATTRIBUTES/VARIABLE_VALUE")
    ]
    assert len(slots) == 2, names  # one per variable: the id table and the dense vector


@pytest.mark.integration
def test_a_plugin_model_without_call_with_reads_fails_the_chief_naming_the_fix(
    tmp_path: Path, make_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry.from_plugins(
        [
            python.PLUGIN,
            spark.PLUGIN,
            tf_engine.PLUGIN,
            deploy.PLUGIN,
            Plugin("tensorflow", models={"fm": "tests.engines.tensorflow.custom_model:build"}),
        ]
    )
    monkeypatch.setattr(tf_executor, "default_registry", lambda: registry)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    write_samples(tmp_path / "samples", 100, files=1)
    path = make_spec(spec(tmp_path, '<cluster ps="0"/>', 'steps="5" optimizer="dc-asgd"').replace("wide_deep", "fm"))
    run = RunContext.create(compile_file(path), settings=load_settings(), tracker=MemoryTracker())
    with pytest.raises(ModuleFailed, match=r"the chief of .* exited with status 1") as err:
        run_node(run, "train")
    assert "model 'fm' (FactorizationMachine) to report the values its forward pass read" in str(err.value)
    assert "call_with_reads(features) -> (logits, [Read(variable, value, indices)])" in str(err.value)


@pytest.mark.integration
def test_dc_asgd_trains_in_a_single_process_where_it_is_plain_sgd(data: Path, make_spec: Callable[..., Path]) -> None:
    found = train_and_evaluate(
        make_spec,
        data,
        '<cluster ps="0"/>',
        'optimizer="dc-asgd" dc-variant="constant" dc-lambda="1" learning-rate="0.5" steps="200" batch-size="256"',
    )
    assert found["fit"]["steps"] == 200 and found["fit"]["workers"] == 0
    assert found["eval"]["auc"] >= 0.75, found["eval"]
