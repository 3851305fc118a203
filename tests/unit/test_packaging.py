"""What ``pip install driftrec`` puts into site-packages: one top-level package, ``driftrec``.

The product's folders ``streams/``, ``models/`` and ``online/`` sit beside ``driftrec/`` in the
tree and are installed as ``driftrec.streams``, ``driftrec.models`` and ``driftrec.online``; the
test harness (``tools/``), the tests and the benchmarks are not installed at all.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    # --no-isolation: build with this environment's setuptools, no index needed.
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out),
                    str(ROOT)], check=True, capture_output=True, cwd=out)
    (wheel,) = out.glob("driftrec-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_the_wheel_has_one_top_level_package(wheel_names: list[str]) -> None:
    top = {name.split("/", 1)[0] for name in wheel_names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"driftrec"}


def test_the_product_folders_are_installed_under_driftrec(wheel_names: list[str]) -> None:
    for module in ("driftrec/online/app.py", "driftrec/streams/processor.py", "driftrec/models/foldin.py",
                   "driftrec/streams/lua/apply_batch.lua", "driftrec/oncall/static/dashboard.html",
                   "driftrec/stack/kafka-pom.xml"):
        assert module in wheel_names, module
    assert not any(n.startswith(("driftrec/chaos/", "tools/", "tests/", "benchmarks/")) for n in wheel_names)
