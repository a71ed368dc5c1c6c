"""What a dataset URI may be: storage, not an arbitrary place or protocol.

Checked at validate time for literal URIs and at run time after `${...}` substitution, so a
param value cannot point a dataset outside its storage root (``..``), chain filesystems
(fsspec's ``::``), or reach a protocol that is not storage (ftp, http, ssh...).
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["STORAGE_PROTOCOLS", "uri_problem"]

STORAGE_PROTOCOLS = frozenset(
    {"file", "hdfs", "webhdfs", "viewfs", "s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "oss", "memory"}
)


def uri_problem(uri: str) -> str | None:
    """Why ``uri`` cannot name a dataset, or None when it can."""
    if "::" in uri:
        return f"'{uri}' chains filesystems with '::'; name one storage location"
    if "://" not in uri:
        if not uri.startswith("/"):
            return f"'{uri}' is relative; use ${{storage}}/..., an absolute path, or a URI such as s3://bucket/..."
        path = uri
    else:
        parts = urlsplit(uri)
        if parts.scheme not in STORAGE_PROTOCOLS:
            known = ", ".join(sorted(STORAGE_PROTOCOLS))
            return f"'{uri}' uses protocol '{parts.scheme}', which is not storage; use one of {known}"
        if parts.scheme == "file" and parts.netloc not in ("", "localhost"):
            return f"'{uri}' names host '{parts.netloc}'; a local path is file:///absolute/path"
        path = parts.path
    if any(segment in (".", "..") for segment in path.split("/")):
        return f"'{uri}' has a '.' or '..' segment; datasets name their location directly"
    return None
