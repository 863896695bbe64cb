"""The distributions a user installs: an sdist and a wheel built with ``python -m build`` carry
the LICENSE, the metadata (SPDX license expression, classifiers, project URLs, authors,
dependency floors that can be installed together) and a console script that names itself."""

from __future__ import annotations

import email.message
import email.parser
import importlib.metadata
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import trio_llmstream

ROOT = Path(__file__).resolve().parent.parent
LICENSE = (ROOT / "LICENSE").read_text()


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel, built from this tree as ``python -m build`` does (the wheel
    from the sdist), without network access (``--no-isolation``: hatchling from the dev
    extra)."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


@pytest.fixture(scope="module")
def metadata(dist: dict[str, Path]) -> email.message.Message:
    with zipfile.ZipFile(dist["wheel"]) as whl:
        (name,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(whl.read(name).decode())


def test_the_license_ships_in_both(dist: dict[str, Path]) -> None:
    assert "MIT License" in LICENSE
    assert "trio_llmstream contributors" in LICENSE
    with tarfile.open(dist["sdist"]) as sdist:
        (member,) = [m for m in sdist.getnames() if m.endswith("/LICENSE")]
        assert member.count("/") == 1  # at the root of the sdist
        extracted = sdist.extractfile(member)
        assert extracted is not None
        assert extracted.read().decode() == LICENSE
    with zipfile.ZipFile(dist["wheel"]) as whl:
        (member,) = [n for n in whl.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert whl.read(member).decode() == LICENSE


def test_metadata_license_and_version(metadata: email.message.Message) -> None:
    assert metadata["Metadata-Version"] >= "2.4"  # license expressions (PEP 639)
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata["License"] is None  # the old free-text field is gone
    assert metadata["Version"] == trio_llmstream.__version__
    assert metadata["Author"] == "trio_llmstream contributors"


def test_metadata_classifiers(metadata: email.message.Message) -> None:
    classifiers = set(metadata.get_all("Classifier") or [])
    assert {
        "Framework :: Trio",
        "Typing :: Typed",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    } <= classifiers
    # PEP 639: with a License-Expression, "License ::" classifiers are deprecated (and
    # rejected by PyPI); the expression says it.
    assert not [c for c in classifiers if c.startswith("License ::")]
    # Every Python version classifier is allowed by Requires-Python.
    floor = Version(metadata["Requires-Python"].removeprefix(">="))
    for c in classifiers:
        version = c.removeprefix("Programming Language :: Python :: ")
        if version != c and version[0].isdigit() and "." in version:
            assert Version(version) >= floor, c


def test_metadata_urls(metadata: email.message.Message) -> None:
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Issues"} <= set(urls)
    repo = urls["Homepage"]
    assert repo.startswith("https://github.com/")
    assert all(url.startswith(repo) for url in urls.values()), urls


def test_dependency_floors_are_installable_together(metadata: email.message.Message) -> None:
    # The installed versions are the tested ones: each must satisfy our requirement, and no
    # floor of ours may be below what another dependency demands of the same package (attrs
    # >= 23.1 could not be installed with trio, which needs attrs >= 23.2).
    runtime = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []
               if "extra ==" not in r]
    assert {r.name for r in runtime} == {"trio", "httpx", "attrs", "msgspec"}
    floors = {
        r.name: Version(next(s.version for s in r.specifier if s.operator == ">="))
        for r in runtime
    }
    for req in runtime:
        installed = importlib.metadata.version(req.name)
        assert req.specifier.contains(installed), (req, installed)
        for theirs in importlib.metadata.requires(req.name) or []:
            dep = Requirement(theirs)
            if dep.name in floors and dep.marker is None:
                assert dep.specifier.contains(floors[dep.name]), (req.name, theirs)
    # attrs: the floor is the tested minor version.
    installed = Version(importlib.metadata.version("attrs"))
    assert floors["attrs"].release[:2] == installed.release[:2]


def test_wheel_contents(dist: dict[str, Path]) -> None:
    with zipfile.ZipFile(dist["wheel"]) as whl:
        names = whl.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert whl.read(entry_points).decode().split() == [
            "[console_scripts]", "trio-llmstream", "=", "trio_llmstream.__main__:main",
        ]
    assert "trio_llmstream/py.typed" in names
    assert "trio_llmstream/_asgi.py" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]


def test_the_installed_console_script_names_itself(
    dist: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--target", str(target), str(dist["wheel"])],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    script = target / "bin" / "trio-llmstream"
    env = {**os.environ, "PYTHONPATH": str(target)}
    version = subprocess.run([sys.executable, str(script), "--version"], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"trio-llmstream {trio_llmstream.__version__}"
    usage = subprocess.run([sys.executable, str(script), "chat"], env=env,
                           capture_output=True, text=True, timeout=60, check=False)
    assert usage.returncode == 2
    assert usage.stderr.startswith("usage: trio-llmstream chat ")
    # And it ran the installed copy, not this tree.
    where = subprocess.run(
        [sys.executable, "-c", "import trio_llmstream; print(trio_llmstream.__file__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    assert where.stdout.strip().startswith(str(target))
