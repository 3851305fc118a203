"""Debian tools the integration tests need (promtool, prometheus, chromium): apt-get installed when
missing and we are root; otherwise a clear failure, never a skip."""

from __future__ import annotations

import os
import shutil
import subprocess

__all__ = ["debian_tool"]


def debian_tool(binary: str, package: str, *, recommends: bool = False) -> str:
    """Path of ``binary`` (a name on PATH or an absolute path), installing ``package`` if needed."""
    def found() -> str | None:
        if os.path.isabs(binary):
            return binary if os.path.exists(binary) else None
        return shutil.which(binary)

    path = found()
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "-q", *([] if recommends else ["--no-install-recommends"]), package]
        for cmd in (install, ["apt-get", "update", "-q"], install):  # update only when the first try fails
            subprocess.run(cmd, env=env, check=False, stdout=subprocess.DEVNULL)
            path = found()
            if path:
                break
    assert path, f"{binary} missing: apt-get install {package}"
    return path
