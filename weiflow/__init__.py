"""WeiFlow: XML pipeline specs compiled into two-level DAGs and run by pluggable engines.

Importing ``weiflow`` loads no engine, scheduler or database library. The public surface:

- :func:`compile_file` parses, checks and compiles a spec into a :class:`~weiflow.dag.Dag`;
- :func:`check_file` returns every :class:`Diagnostic` of a spec without raising;
- :mod:`weiflow.runtime` runs a compiled DAG (:func:`~weiflow.runtime.run_pipeline`,
  :func:`~weiflow.runtime.run_node`);
- :mod:`weiflow.registry` declares engines and module types (:class:`~weiflow.registry.Plugin`);
- :mod:`weiflow.errors` is the error tree.
"""

from weiflow.dag import Dag, check_file, compile_file, dag_to_dict
from weiflow.errors import Diagnostic, SpecError, WeiflowError

__version__ = "0.1.0"

__all__ = [
    "Dag",
    "Diagnostic",
    "SpecError",
    "WeiflowError",
    "__version__",
    "check_file",
    "compile_file",
    "dag_to_dict",
]
