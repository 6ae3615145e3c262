"""A copy of Ray's wheel without what a tunebench study does not use, small enough for one GPU-machine call.

    python scripts/slim_ray_wheel.py RAY.whl OUT_DIR

Ray 2.60's cp312 wheel is ~79 MB; the device tool carries at most 64 MiB per call. Dropping the Java jars,
RLlib, Ray Data, Tune, Train, Serve, LLM and the dashboard's web client leaves the core (GCS, raylet, workers,
`ray.util`, `ray.cluster_utils`): 39 MB. The RECORD file is rewritten for what remains, so pip installs it.
"""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

DROP = ("ray/jars/", "ray/rllib/", "ray/data/", "ray/tune/", "ray/train/", "ray/serve/", "ray/llm/",
        "ray/dashboard/client/", "ray/air/examples/", "ray/tests/")


def main(source: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / source.name
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        record = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        lines = []
        for name in src.namelist():
            if name == record or name.startswith(DROP) or name.endswith("/"):
                continue
            data = src.read(name)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            lines.append(f"{name},sha256={digest},{len(data)}")
            dst.writestr(name, data)
        dst.writestr(record, "\n".join([*lines, f"{record},,"]) + "\n")
    return target


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    path = main(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
