"""Every canned model and optimizer trains single-process; a plug-in's model trains too; clear errors."""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.engines.tensorflow.samples import write_samples
from weiflow.config import load_settings
from weiflow.dag import compile_file
from weiflow.engines.tensorflow import executor as tf_executor
from weiflow.errors import ModuleFailed
from weiflow.registry import Plugin, Registry
from weiflow.runtime import RunContext, run_node, run_pipeline
from weiflow.tracking import EventKind, MemoryTracker

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_samples(tmp_path_factory.mktemp("tf-models") / "samples", 20_000, files=2)


def spec(samples: Path, modules: str) -> str:
    return textwrap.dedent(f"""\
        <pipeline xmlns="urn:weiflow:pipeline:1" name="models">
          <datasets>
            <dataset name="samples" uri="file://{samples}" format="parquet" external="true"/>
          </datasets>
          <node id="train" engine="tensorflow">
            <cluster ps="0"/>
            {modules}
          </node>
        </pipeline>
        """)


def test_each_canned_model_with_each_optimizer_learns_the_signal(samples: Path, make_spec: Callable[..., Path]) -> None:
    cases = [
        ("logistic", "sgd", 0.5),
        ("dnn", "adam", 0.01),
        ("wide_deep", "adagrad", 0.1),
        ("residual_dnn", "adam", 0.01),
    ]
    modules = "".join(
        f'<module id="fit_{model}" type="train" dataset="samples" model="{model}" optimizer="{opt}" '
        f'learning-rate="{lr}" epochs="2" batch-size="256" hidden-units="16,16"/>'
        f'<module id="eval_{model}" type="evaluate" input="fit_{model}" metrics="auc"/>'
        for model, opt, lr in cases
    )
    tracker = MemoryTracker()
    run = RunContext.create(compile_file(make_spec(spec(samples, modules))), settings=load_settings(), tracker=tracker)
    result = run_pipeline(run)
    assert result.succeeded, result.errors
    found = {e.module: e.detail for e in tracker.events if e.kind is EventKind.METRICS}
    for model, _, _ in cases:
        assert found[f"fit_{model}"]["steps"] == -(-2 * 20_000 // 256)  # epochs="2": 40,000 examples in batches of 256
        assert found[f"eval_{model}"]["auc"] > 0.75, (model, found[f"eval_{model}"])


def test_a_plugin_model_trains_through_the_registry(
    samples: Path, make_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry.from_plugins(
        [
            *default_registry_plugins(),
            Plugin("tensorflow", models={"fm": "tests.engines.tensorflow.custom_model:build"}),
        ]
    )
    monkeypatch.setattr(tf_executor, "default_registry", lambda: registry)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    modules = (
        '<module id="fit" type="train" dataset="samples" model="fm" learning-rate="0.1" steps="300" batch-size="256"/>'
        '<module id="eval" type="evaluate" input="fit" metrics="auc,accuracy"/>'
    )
    tracker = MemoryTracker()
    run = RunContext.create(compile_file(make_spec(spec(samples, modules))), settings=load_settings(), tracker=tracker)
    run_node(run, "train")
    evaluated = next(e.detail for e in tracker.events if e.kind is EventKind.METRICS and e.module == "eval")
    assert evaluated["auc"] > 0.75


def default_registry_plugins() -> list[Plugin]:
    from weiflow.engines import deploy, python, spark, tensorflow

    return [python.PLUGIN, spark.PLUGIN, tensorflow.PLUGIN, deploy.PLUGIN]


def test_plugins_may_not_give_one_model_name_two_builders() -> None:
    from weiflow.errors import RegistryError

    with pytest.raises(
        RegistryError, match=re.escape("model 'fm' of engine 'tensorflow' is already provided by a.b:c")
    ):
        Registry.from_plugins(
            [Plugin("tensorflow", models={"fm": "a.b:c"}), Plugin("tensorflow", models={"fm": "x:y"})]
        )


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ('model="wide_dep" steps="5"', "unknown model 'wide_dep' (did you mean 'wide_deep'?)"),
        ('model="dnn" steps="5" label="clicked"', "dataset 'samples' has no numeric column clicked; numeric columns: "),
    ],
)
def test_mistakes_fail_before_any_process_starts(
    samples: Path, make_spec: Callable[..., Path], attrs: str, message: str
) -> None:
    tracker = MemoryTracker()
    modules = f'<module id="fit" type="train" dataset="samples" {attrs}/>'
    run = RunContext.create(compile_file(make_spec(spec(samples, modules))), settings=load_settings(), tracker=tracker)
    with pytest.raises(ModuleFailed, match=re.escape(message)):
        run_node(run, "train")
    assert not [e for e in tracker.events if e.kind is EventKind.CLUSTER_STARTED]


def test_an_embedding_too_large_for_memory_is_refused_with_the_feature_to_hash(
    tmp_path: Path, make_spec: Callable[..., Path]
) -> None:
    wide = write_samples(tmp_path / "wide", 100, files=1, hash_buckets=1 << 28)
    modules = '<module id="fit" type="train" dataset="samples" model="dnn" steps="5"/>'
    run = RunContext.create(
        compile_file(make_spec(spec(wide, modules))), settings=load_settings(), tracker=MemoryTracker()
    )
    with pytest.raises(ModuleFailed, match="'u_hash' alone has 268,435,456: hash it into fewer ids"):
        run_node(run, "train")


def test_a_failing_chief_fails_the_module_quoting_its_log(
    samples: Path, make_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry.from_plugins(
        [*default_registry_plugins(), Plugin("tensorflow", models={"broken": "no_such_package.models:build"})]
    )
    monkeypatch.setattr(tf_executor, "default_registry", lambda: registry)
    modules = '<module id="fit" type="train" dataset="samples" model="broken" steps="5"/>'
    run = RunContext.create(
        compile_file(make_spec(spec(samples, modules))), settings=load_settings(), tracker=MemoryTracker()
    )
    with pytest.raises(
        ModuleFailed, match=r"the chief of .* exited with status 1; last lines of .*chief-0\.log"
    ) as err:
        run_node(run, "train")
    assert "No module named 'no_such_package'" in str(err.value)
