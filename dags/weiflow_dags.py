"""WeiFlow's Airflow DAG loader: every XML spec becomes an Airflow DAG, one task per outer node.

Airflow runs this file in one of two ways (docs/airflow.md, "The loader"):

* From ``weiflow.airflow.bundle.SpecBundle`` (what ``./dev airflow`` configures): the bundle
  generates one small DAG file per spec, which runs this file with ``WEIFLOW_SPEC`` set to that
  spec. Each spec is then parsed on its own, and a spec that fails validation is the import
  error of its own file, with its ``file:line:col`` message.
* As a plain file of Airflow's dags folder: it builds the DAG of every valid spec in
  ``$WEIFLOW_SPECS`` (default: ``xml_specs/`` beside this folder). Airflow 3.3 drops every DAG
  of a file whose import raises, so here an invalid spec is only logged (in the DAG processor's
  log of this file) and the others still load.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_PROJECT = Path(__file__).resolve().parent.parent
if str(_PROJECT) not in sys.path:
    sys.path.insert(0, str(_PROJECT))  # operators/ sits beside dags/

from airflow.sdk import get_parsing_context  # noqa: E402

from operators import WeiflowNodeOperator  # noqa: E402
from weiflow.airflow.loader import load_dag, load_dags, spec_bundle_configured  # noqa: E402

_spec = globals().get("WEIFLOW_SPEC")
if _spec:
    dag = load_dag(_spec, operator=WeiflowNodeOperator)
elif not spec_bundle_configured():  # else the bundle owns the specs: no DAG id twice
    _loaded = load_dags(
        os.environ.get("WEIFLOW_SPECS") or _PROJECT / "xml_specs",
        operator=WeiflowNodeOperator,
        only=get_parsing_context().dag_id,  # a worker running one task needs only its DAG
    )
    globals().update({f"weiflow_dag__{dag_id}": built for dag_id, built in _loaded.dags.items()})
