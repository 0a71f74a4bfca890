"""Versions compared as versions, not as text: 1.10 is newer than 1.9 (a text sort says otherwise).

The one rule for "the newest version of a pipeline", wherever it is picked or listed
(Pipeline.objects.current(), the pipeline lists of the pages and the API, the stale-version
schedule): versions are PEP 440 version numbers ("2", "2.0.1", "2.1rc1") compared with
packaging.version.Version. A version that is not one (say "beta") sorts below every version
number, so it never becomes current while a numbered version is enabled; between two such
versions, text order decides.
"""

from packaging.version import InvalidVersion, Version


def version_key(version: str) -> tuple:
    """Sort key of a version: larger is newer."""
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)
