"""Pipeline specs: hardened XML parsing, the positioned model, `${...}` references.

This layer knows the XML contract (the XSD in ``weiflow/schemas``) and nothing of engines.
"""

from weiflow.spec.model import (
    Attr,
    DatasetSpec,
    Element,
    ModuleSpec,
    NodeSpec,
    ParamSpec,
    PipelineSpec,
    Pos,
)
from weiflow.spec.parser import DEFAULT_MAX_SPEC_BYTES, NAMESPACE, parse_spec, read_spec_bytes, split_list
from weiflow.spec.report import Reporter, closest, did_you_mean
from weiflow.spec.templating import CONTEXT_VARIABLES, Reference, TemplateError, references, substitute

__all__ = [
    "CONTEXT_VARIABLES",
    "DEFAULT_MAX_SPEC_BYTES",
    "NAMESPACE",
    "Attr",
    "DatasetSpec",
    "Element",
    "ModuleSpec",
    "NodeSpec",
    "ParamSpec",
    "PipelineSpec",
    "Pos",
    "Reference",
    "Reporter",
    "TemplateError",
    "closest",
    "did_you_mean",
    "parse_spec",
    "read_spec_bytes",
    "references",
    "split_list",
    "substitute",
]
