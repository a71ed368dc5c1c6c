"""Synthetic, realistic WeiFlow pipeline specs for the benchmarks.

``generate_spec(n_nodes, seed)`` returns the XML text of a valid spec (zero errors, zero
warnings from ``weiflow.dag.check_file``) with ``n_nodes`` outer nodes that mix every engine:

- spark nodes: read (sometimes two reads and a join), filter, sample, dedup, a features
  module using all five feature functions, a split into train/holdout, and two writes;
- tensorflow nodes: a ``<cluster>``, then train, evaluate and export;
- deploy nodes: publish (and sometimes promote) a model a tensorflow node exported;
- python nodes: ``call`` modules reading and writing datasets.

Every node after the first reads datasets that earlier nodes write (spark nodes may also read
the pipeline's external raw datasets); about a third also carry ``depends=``. Params are
declared and used through ``${...}`` references in URIs and module attributes.

``generate_spec(..., error=KIND)`` plants one deliberate error of the given kind (see
``ERROR_KINDS``) so the benchmarks can measure the error path too.

Run as a script it only prints a small sample spec (``./dev bench`` runs every bench/*.py).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

__all__ = ["ERROR_KINDS", "generate_spec"]

# Each kind makes check_file report at least one error; the mix covers the XML parser, the
# XSD, and the semantic checks of the compiler and of the feature functions.
ERROR_KINDS = (
    "malformed-xml",  # not well-formed: the closing </pipeline> is cut off
    "schema",  # XSD: an attribute <dataset> does not have
    "unknown-dataset",  # semantic: a module reads a dataset nobody declared
    "undefined-reference",  # semantic: ${...} names no param and no run-context variable
    "unsorted-boundaries",  # feature rule: piecewise boundaries not strictly increasing
    "descartes-real",  # feature rule: descartes crosses a normalize (real-valued) feature
    "node-cycle",  # outer DAG: two nodes depend on each other
)

_RETENTIONS = ("consumed", "ttl:7", "ttl:30", "idle:14", "keep-last:3", "pinned")
_RAW_COLUMNS = ("age", "city", "gender", "hist_ctr", "page_views", "dwell_s", "item_id", "uid", "hour")
_MODELS = ("logistic", "dnn", "wide_deep", "residual_dnn")


def _attrs(**values: object) -> str:
    """``key="value"`` pairs in the given order; ``_`` in a key becomes ``-``; None is left out."""
    return " ".join(
        f"{k.rstrip('_').replace('_', '-')}={quoteattr(str(v))}" for k, v in values.items() if v is not None
    )


@dataclass
class _Dataset:
    name: str
    uri: str
    format: str
    external: bool = False
    retention: str | None = None


@dataclass
class _State:
    rng: random.Random
    error: str | None
    datasets: list[_Dataset] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)  # external inputs
    tables: list[str] = field(default_factory=list)  # tabular outputs of earlier nodes
    samples: list[tuple[str, str]] = field(default_factory=list)  # (train, holdout) from spark nodes
    models: list[str] = field(default_factory=list)  # exported by tensorflow nodes
    node_ids: list[str] = field(default_factory=list)
    errors_planted: int = 0

    def declare(self, name: str, fmt: str, *, keyed_by: str = "day") -> str:
        uri = f"${{storage}}/${{pipeline}}/{name}/${{{keyed_by}}}"
        retention = "keep-last:5" if fmt == "savedmodel" else self.rng.choice(_RETENTIONS)
        self.datasets.append(_Dataset(name, uri, fmt, retention=retention))
        return name

    def plant(self, kind: str) -> bool:
        """True exactly once, the first time the requested error kind can be planted."""
        if self.error == kind and not self.errors_planted:
            self.errors_planted += 1
            return True
        return False


def _depends(state: _State) -> str | None:
    if len(state.node_ids) < 2 or state.rng.random() > 0.33:
        return None
    picks = state.rng.sample(state.node_ids, k=min(len(state.node_ids), state.rng.randint(1, 2)))
    return ",".join(picks)


def _node_open(node_id: str, engine: str, depends: str | None, **extra: object) -> str:
    return f"  <node {_attrs(id=node_id, engine=engine, depends=depends, **extra)}>"


def _features(state: _State, index: int) -> list[str]:
    rng = state.rng
    lines: list[str] = []
    # piecewise: strictly increasing boundaries
    bounds = [rng.randint(5, 20)]
    for _ in range(rng.randint(2, 5)):
        bounds.append(bounds[-1] + rng.randint(3, 8))
    if state.plant("unsorted-boundaries"):
        bounds[1], bounds[2] = bounds[2], bounds[1]
    lines.append(_feature("age_b", "piecewise", source="age", boundaries=",".join(map(str, bounds))))
    # pickcat: learned, and a fixed vocabulary
    lines.append(
        _feature("city", "pickcat", source="city", top=rng.choice((100, 1000, 5000)), min_count="${min_count}")
    )
    lines.append(_feature("gender", "pickcat", source="gender", values="f,m,u"))
    # normalize: all three methods
    lines.append(_feature("ctr", "normalize", source="hist_ctr", method="zscore"))
    lines.append(_feature("pv", "normalize", source="page_views", method="log1p"))
    if rng.random() < 0.5:
        lines.append(_feature("dwell", "normalize", source="dwell_s", method="minmax"))
    # descartes: crosses categorical features of this module
    lines.append(_feature("age_city", "descartes", sources="age_b,city"))
    if state.plant("descartes-real"):
        lines.append(_feature("ctr_city", "descartes", sources="ctr,city"))
    elif rng.random() < 0.5:
        lines.append(_feature("age_gender_city", "descartes", sources="age_b,gender,city"))
    # combinehash: a hashed cross of raw columns
    lines.append(_feature("u_item", "combinehash", sources="uid,item_id", buckets=2 ** rng.randint(16, 22)))
    if rng.random() < 0.5:
        lines.append(_feature("item_hour", "combinehash", sources="item_id,hour", buckets=262144))
    return lines


def _feature(name: str, fn: str, **attrs: object) -> str:
    return f"      <feature {_attrs(name=name, fn=fn, **attrs)}/>"


def _spark_node(state: _State, index: int) -> list[str]:
    rng = state.rng
    node_id = f"features_{index:03d}"
    pool = state.tables if state.tables and rng.random() < 0.7 else state.raw
    source = rng.choice(pool)
    if state.plant("unknown-dataset"):
        source = source + "_missing"
    lines = [_node_open(node_id, "spark", _depends(state), resources=rng.choice(("small", "medium", "large")))]
    lines.append(f'    <conf name="spark.sql.shuffle.partitions" value="{rng.choice((16, 64, 200))}"/>')
    lines.append(f"    <module {_attrs(id='read', type='read', dataset=source)}/>")
    last = "read"
    others = [d for d in state.raw + state.tables if d != source]
    if others and rng.random() < 0.3:
        lines.append(
            f"    <module {_attrs(id='read_side', type='read', dataset=rng.choice(others), columns='uid,age')}/>"
        )
        lines.append(f"    <module {_attrs(id='joined', type='join', input='read,read_side', on='uid', how='left')}/>")
        last = "joined"
    region = "${region_typo}" if state.plant("undefined-reference") else "${region}"
    condition = f"label IS NOT NULL AND uid IS NOT NULL AND region = '{region}'"
    lines.append(f"    <module {_attrs(id='clean', type='filter', input=last, condition=condition)}/>")
    last = "clean"
    if rng.random() < 0.6:
        lines.append(f"    <module {_attrs(id='down', type='sample', input=last, rate='${sample_rate}', seed=index)}/>")
        last = "down"
    if rng.random() < 0.5:
        lines.append(f"    <module {_attrs(id='dedup', type='dedup', input=last, columns='uid,item_id')}/>")
        last = "dedup"
    lines.append(f"    <module {_attrs(id='feats', type='features', input=last, label='label', keep='uid')}>")
    lines.extend(_features(state, index))
    lines.append("    </module>")
    ratio = rng.choice(("0.9,0.1", "0.8,0.2", "0.95,0.05"))
    split = _attrs(id="parts", type="split", input="feats", ratios=ratio, names="train,holdout", seed=7)
    lines.append(f"    <module {split}/>")
    fmt = rng.choice(("tfrecord", "parquet"))
    train = state.declare(f"samples_{index:03d}", fmt)
    holdout = state.declare(f"holdout_{index:03d}", fmt)
    files = rng.choice((8, 16, 32))
    lines.append(f"    <module {_attrs(id='w_train', type='write', input='parts.train', dataset=train, files=files)}/>")
    lines.append(
        f"    <module {_attrs(id='w_holdout', type='write', input='parts.holdout', dataset=holdout, files=2)}/>"
    )
    lines.append("  </node>")
    state.samples.append((train, holdout))
    state.tables.append(train)
    state.node_ids.append(node_id)
    return lines


def _tensorflow_node(state: _State, index: int) -> list[str]:
    rng = state.rng
    node_id = f"train_{index:03d}"
    train, holdout = rng.choice(state.samples[-4:])
    model = state.declare(f"model_{index:03d}", "savedmodel", keyed_by="run_id")
    ps = rng.choice((0, 1, 2, 4))
    lines = [_node_open(node_id, "tensorflow", _depends(state), retries=rng.choice((None, 0, 2)))]
    lines.append(f"    <cluster {_attrs(ps=ps, workers=rng.choice((1, 2, 4, 8)), backend='local')}/>")
    units = ",".join(str(2**k) for k in range(rng.randint(7, 9), rng.randint(4, 6), -1))
    fit = _attrs(
        id="fit",
        type="train",
        dataset=train,
        model=rng.choice(_MODELS),
        hidden_units=units,
        optimizer=rng.choice(("sgd", "adagrad", "adam")),
        learning_rate=rng.choice(("0.001", "0.01", "0.05")),
        batch_size=rng.choice((256, 512, 1024)),
        steps="${train_steps}",
    )
    lines.append(f"    <module {fit}/>")
    lines.append(
        f"    <module {_attrs(id='eval', type='evaluate', input='fit', dataset=holdout, metrics='auc,logloss')}/>"
    )
    lines.append(f"    <module {_attrs(id='save', type='export', input='fit', dataset=model)}/>")
    lines.append("  </node>")
    state.models.append(model)
    state.node_ids.append(node_id)
    return lines


def _deploy_node(state: _State, index: int) -> list[str]:
    rng = state.rng
    node_id = f"deploy_{index:03d}"
    model = rng.choice(state.models[-3:])
    name = f"{model}_svc"
    lines = [_node_open(node_id, "deploy", _depends(state))]
    lines.append(
        f"    <module {_attrs(id='pub', type='publish', dataset=model, model_name=name, traffic='${traffic}')}/>"
    )
    if rng.random() < 0.5:
        lines.append(f"    <module {_attrs(id='ramp', type='promote', input='pub', model_name=name, traffic=100)}/>")
    lines.append("  </node>")
    state.node_ids.append(node_id)
    return lines


def _python_node(state: _State, index: int) -> list[str]:
    rng = state.rng
    node_id = f"report_{index:03d}"
    reads = rng.sample(state.tables, k=min(len(state.tables), rng.randint(1, 2)))
    out = state.declare(f"stats_{index:03d}", rng.choice(("json", "jsonl")))
    lines = [_node_open(node_id, "python", _depends(state))]
    lines.append(f"    <module {_attrs(id='load', type='call', callable='bench_steps:load', reads=','.join(reads))}/>")
    agg = _attrs(
        id="agg",
        type="call",
        callable="bench_steps:aggregate",
        input="load",
        region="${region}",
        top=rng.randint(5, 50),
    )
    lines.append(f"    <module {agg}/>")
    lines.append(
        f"    <module {_attrs(id='save', type='call', callable='bench_steps:save', input='agg', writes=out)}/>"
    )
    lines.append("  </node>")
    state.tables.append(out)
    state.node_ids.append(node_id)
    return lines


def generate_spec(n_nodes: int, seed: int, *, error: str | None = None) -> str:
    """The XML text of a valid spec with ``n_nodes`` outer nodes (deterministic in ``seed``).

    With ``error`` (one of ``ERROR_KINDS``) the spec carries that one deliberate error.
    """
    if n_nodes < 1:
        raise ValueError("n_nodes must be at least 1")
    if error is not None and error not in ERROR_KINDS:
        raise ValueError(f"unknown error kind {error!r}; use one of {', '.join(ERROR_KINDS)}")
    if error == "node-cycle" and n_nodes < 2:
        raise ValueError("a node cycle needs at least 2 nodes")
    rng = random.Random(seed)
    state = _State(rng, error)
    for r in range(1 + n_nodes // 25):
        name = f"raw_{r:02d}"
        state.datasets.append(_Dataset(name, f"file:///data/raw/{name}/${{day}}", "parquet", external=True))
        state.raw.append(name)

    body: list[str] = []
    for index in range(n_nodes):
        roll = rng.random()
        if index == 0:
            builder = _spark_node
        elif roll < 0.25 and state.samples:
            builder = _tensorflow_node
        elif roll < 0.40 and state.models:
            builder = _deploy_node
        elif roll < 0.60 and state.tables:
            builder = _python_node
        else:
            builder = _spark_node
        body.extend(builder(state, index))

    if error == "node-cycle":  # the first two nodes depend on each other
        first, second = state.node_ids[0], state.node_ids[1]
        for i, line in enumerate(body):
            for me, other in ((first, second), (second, first)):
                if line.startswith(f'  <node id="{me}" '):
                    stripped = re.sub(r' depends="[^"]*"', "", line)
                    body[i] = stripped.replace(" engine=", f' depends="{other}" engine=', 1)

    # An external dataset no node happened to read would only draw a "never used" warning.
    text = "\n".join(body)
    state.datasets = [d for d in state.datasets if not d.external or f'"{d.name}"' in text or f",{d.name}" in text]

    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f"<!-- generated by bench/specgen.py: {n_nodes} nodes, seed {seed} -->",
        "<pipeline "
        + _attrs(
            xmlns="urn:weiflow:pipeline:1",
            name=f"bench_{n_nodes}_{seed}",
            owner=rng.choice(("ranking", "search", "growth", "ads")),
            schedule=rng.choice(("@daily", "@hourly", "0 3 * * *", "30 */6 * * *")),
            start_date="2026-11-01",
            priority=rng.choice(("high", "medium", "low")),
            retries=rng.randint(0, 3),
            tags="bench,synthetic",
        )
        + ">",
        f"  <description>Synthetic benchmark pipeline: {n_nodes} nodes across spark, tensorflow, "
        "deploy and python</description>",
        "  <params>",
        '    <param name="day" type="date" default="${ds}" description="partition of raw data"/>',
        '    <param name="sample_rate" type="float" default="0.5" description="fraction of negatives kept"/>',
        '    <param name="train_steps" type="int" default="2000"/>',
        '    <param name="traffic" type="int" default="10" description="gray-release percent"/>',
        '    <param name="min_count" type="int" default="5"/>',
        '    <param name="region" type="string" default="cn-north"/>',
        "  </params>",
        "  <datasets>",
    ]
    planted_schema = False
    for dataset in state.datasets:
        extra: dict[str, object] = {}
        if error == "schema" and not planted_schema and not dataset.external:
            extra["compression"] = "zstd"  # not an attribute of <dataset>
            planted_schema = True
        attrs = _attrs(
            name=dataset.name,
            uri=dataset.uri,
            format=dataset.format,
            external="true" if dataset.external else None,
            retention=dataset.retention,
            **extra,
        )
        lines.append(f"    <dataset {attrs}/>")
    lines.append("  </datasets>")
    lines.extend(body)
    if error != "malformed-xml":
        lines.append("</pipeline>")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print a sample generated spec (the benchmarks import this module).")
    parser.add_argument("--nodes", type=int, default=4, help="outer nodes (default 4)")
    parser.add_argument("--seed", type=int, default=61, help="default 61: 4 nodes, one of each engine")
    parser.add_argument("--error", choices=ERROR_KINDS, help="plant one deliberate error of this kind")
    # `./dev bench ARGS` passes ARGS to every bench/*.py; options meant for the others are ignored here.
    args, _unknown = parser.parse_known_args(argv)
    sys.stdout.write(generate_spec(args.nodes, args.seed, error=args.error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
