"""Version policies applied to the version directories found under a base path."""

from __future__ import annotations

from weiflow.serving.config import (
    AllVersions,
    LatestVersions,
    SpecificVersions,
    VersionSelection,
    resolve_versions,
    versions_on_disk,
)


def test_versions_on_disk_reads_canonical_version_names_only() -> None:
    names = ["3", "10", "1", "007", "0", "-2", "tmp", ".weiflow", "2.partial", "weiflow-routing.json"]
    assert versions_on_disk(names) == [1, 3, 10]


def test_latest_takes_the_highest_numbers_not_the_last_listed() -> None:
    assert resolve_versions(LatestVersions(), [3, 10, 9]).versions == (10,)
    assert resolve_versions(LatestVersions(2), [3, 10, 9]).versions == (9, 10)
    assert resolve_versions(LatestVersions(5), [2, 1]).versions == (1, 2)
    assert resolve_versions(LatestVersions(0), [1, 2]).versions == (2,)  # TensorFlow Serving serves at least one
    assert resolve_versions(LatestVersions(), []) == VersionSelection(())


def test_all() -> None:
    assert resolve_versions(AllVersions(), [5, 1, 3, 3]).versions == (1, 3, 5)


def test_specific_reports_the_versions_not_on_disk() -> None:
    selection = resolve_versions(SpecificVersions((1, 4, 7)), [1, 2, 3, 7])
    assert selection.versions == (1, 7)
    assert selection.missing == (4,)
    assert resolve_versions(SpecificVersions((2,)), [1, 2]).missing == ()


def test_labels_pointing_at_versions_not_served() -> None:
    selection = resolve_versions(SpecificVersions((42, 43)), [42], {"stable": 42, "canary": 43})
    assert selection.versions == (42,)
    assert selection.missing == (43,)
    assert dict(selection.unavailable_labels) == {"canary": 43}
    # A label on a version the latest policy no longer serves is unavailable too.
    assert dict(resolve_versions(LatestVersions(), [1, 2], {"old": 1}).unavailable_labels) == {"old": 1}
