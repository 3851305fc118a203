"""``driftrec serve`` freezes its start-up objects before serving (online.app.tune_gc)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# Run in a child: freezing the collector is process-wide and must not touch the test process.
_CHILD = textwrap.dedent("""
    import gc, json
    import uvicorn
    from driftrec import cli

    seen = {}

    def fake_run(app, **kwargs):
        seen["frozen"] = gc.get_freeze_count()
        seen["tracked"] = len(gc.get_objects())
        seen["app"] = type(app).__name__

    uvicorn.run = fake_run
    before = gc.get_freeze_count()
    cli.serve(host="127.0.0.1", port=1)
    print(json.dumps({"before": before, **seen}))
""")


def test_serve_freezes_start_up_objects_before_uvicorn_runs() -> None:
    # The Python reader's own start-up (with the compiled front, serve would start two processes).
    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "PATH": "",
           "DRIFTREC_READER_NATIVE": "false"}
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=120,
                         env=env, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["app"] == "Starlette"
    assert got["before"] == 0
    # Tens of thousands of import-time objects left the collector's generations; few remain.
    assert got["frozen"] > 20_000
    assert got["tracked"] < got["frozen"] / 10
