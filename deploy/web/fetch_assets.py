"""Fetch the browser assets traceline serves itself, from the npm registry, into the package.

    python deploy/web/fetch_assets.py            # idempotent; `make install` runs it

Reads ``deploy/web/assets.json`` (package, exact version, the registry's sha512 integrity,
the files to keep), runs ``npm pack`` for each package into ``deploy/web/cache/`` (no
dependencies, no install scripts), checks the tarball against the pinned integrity, and
unpacks the named files into ``traceline/static/vendor/<dest>/``. Nothing is fetched at run
time: ``traceline serve`` serves these files (``/docs``, ``/redoc``) on an air-gapped network.
Standard library only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MANIFEST = HERE / "assets.json"
CACHE = HERE / "cache"
VENDOR = REPO / "traceline" / "static" / "vendor"
STAMP = VENDOR / ".manifest.sha256"


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def _pack(name: str, version: str, integrity: str) -> Path:
    tgz = CACHE / f"{name.replace('/', '-').lstrip('@')}-{version}.tgz"
    if tgz.is_file() and _integrity(tgz) == integrity:
        return tgz
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("error: npm not found: install Node.js and npm (apt-get install nodejs npm)")
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"fetching {name}@{version} from the npm registry", file=sys.stderr, flush=True)
    done = subprocess.run(
        [npm, "pack", "--silent", "--ignore-scripts", "--pack-destination", str(CACHE), f"{name}@{version}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"error: npm pack {name}@{version} failed: {done.stderr.strip() or done.stdout.strip()}")
    got = CACHE / done.stdout.strip().splitlines()[-1]
    if got != tgz:
        got.replace(tgz)
    actual = _integrity(tgz)
    if actual != integrity:
        tgz.unlink()
        sys.exit(f"error: {name}@{version}: integrity {actual} does not match the pinned {integrity}")
    return tgz


def main() -> int:
    manifest = json.loads(MANIFEST.read_text())
    digest = hashlib.sha256(MANIFEST.read_bytes()).hexdigest()
    wanted = [VENDOR / p["dest"] / Path(f).name for p in manifest["packages"] for f in p["files"]]
    if STAMP.is_file() and STAMP.read_text().strip() == digest and all(w.is_file() for w in wanted):
        return 0
    for pkg in manifest["packages"]:
        tgz = _pack(pkg["name"], pkg["version"], pkg["integrity"])
        dest = VENDOR / pkg["dest"]
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        with tarfile.open(tgz) as tar:
            for rel in pkg["files"]:
                member = tar.getmember(f"package/{rel}")
                src = tar.extractfile(member)
                if src is None:
                    sys.exit(f"error: {pkg['name']}: {rel} is not a file in the package")
                (dest / Path(rel).name).write_bytes(src.read())
        (dest / "VERSION").write_text(f"{pkg['name']}@{pkg['version']} {pkg['integrity']}\n")
    STAMP.write_text(digest + "\n")
    print(f"browser assets ready in {VENDOR}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
