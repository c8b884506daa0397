"""`make demo`: simulated cameras on loopback and the real daemon in front of them.

Open http://127.0.0.1:8080/api/cameras (or the console at /) while it runs;
Ctrl-C stops everything.  Storage goes to ./demo-data.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sim.client import SimCamera  # noqa: E402

DEMO_PASSWORD = "Pa55@w:rd%21!"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:8080")
    parser.add_argument("--data", default=str(REPO / "demo-data"))
    parser.add_argument("--archive", action="store_true",
                        help="also start a local Ceph RADOS Gateway and archive every segment to it (S3 Object Lock)")
    args = parser.parse_args()

    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops everything like Ctrl-C (the gateway's processes included)

    signal.signal(signal.SIGTERM, interrupted)
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)

    cams = {
        "hall-1": SimCamera("hall-1", codec="h264", width=640, height=360, fps=15, log_path=data / "cam-hall-1.log"),
        "entrance-1": SimCamera("entrance-1", codec="h264", width=640, height=360, fps=15, audio="pcmu",
                                log_path=data / "cam-entrance-1.log"),
        "cell-1": SimCamera("cell-1", codec="h265", width=640, height=360, fps=15, log_path=data / "cam-cell-1.log"),
        "cell-1-sub": SimCamera("cell-1-sub", codec="h264", width=320, height=180, fps=15,
                                log_path=data / "cam-cell-1-sub.log"),
        "corridor-1": SimCamera("corridor-1", codec="h264", width=640, height=360, fps=15, user="viewer",
                                password=DEMO_PASSWORD, log_path=data / "cam-corridor-1.log"),
    }
    config = {
        "station": {"id": "st-demo", "name": "Demo station"},
        "storage": {"path": str(data / "storage"), "segment_seconds": 60},
        "web": {"listen": args.listen},
        "cameras": [
            {"id": "hall-1", "name": "Front hall", "zone": "hall", "url": cams["hall-1"].url},
            {"id": "entrance-1", "name": "Entrance (audio)", "zone": "entrance", "url": cams["entrance-1"].url},
            {"id": "cell-1", "name": "Holding cell 1 (H.265)", "zone": "holding_cell", "url": cams["cell-1"].url,
             "live_url": cams["cell-1-sub"].url},
            {"id": "corridor-1", "name": "Corridor (auth)", "zone": "corridor",
             "url": f"rtsp://viewer:${{CORRIDOR_PASS}}@127.0.0.1:{cams['corridor-1'].port}/stream"},
        ],
    }
    env = {**os.environ, "CORRIDOR_PASS": DEMO_PASSWORD}
    gateway = None
    if args.archive:
        from sim.radosgw import RadosGateway

        gateway = RadosGateway(data / "radosgw")
        print("starting a local Ceph RADOS Gateway for the archive (about 15 s)...", flush=True)
        gateway.start()
        import boto3
        from botocore.config import Config as BotoConfig

        boto3.client("s3", endpoint_url=gateway.endpoint, aws_access_key_id=gateway.access_key,
                     aws_secret_access_key=gateway.secret_key, region_name="default",
                     config=BotoConfig(s3={"addressing_style": "path"})).create_bucket(
            Bucket="nvr-demo", ObjectLockEnabledForBucket=True)
        config["archive"] = {"endpoint": gateway.endpoint, "bucket": "nvr-demo", "access_key": "${DEMO_S3_ACCESS}",
                             "secret_key": "${DEMO_S3_SECRET}", "lock_mode": "governance", "lock_days": 1}
        env.update(DEMO_S3_ACCESS=gateway.access_key, DEMO_S3_SECRET=gateway.secret_key)
        print(f"archive: {gateway.endpoint} bucket nvr-demo (GET /api/archive shows the backlog)")
    config_path = data / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    nvr = [sys.executable, "-m", "nvr"]
    try:
        for cam in cams.values():
            cam.start()
            print(f"camera {cam.name}: {cam.url}")
        subprocess.run([*nvr, "init-storage", "-c", str(config_path)], check=True, env=env, cwd=REPO)
        password = os.environ.get("NVR_DEMO_PASSWORD") or secrets.token_urlsafe(9)
        for action in (["add", "--role", "admin"], ["passwd"]):  # passwd when a previous demo made the user
            done = subprocess.run([*nvr, "user", *action, "admin", "--password-stdin", "-c", str(config_path)],
                                  input=password + "\n", text=True, env=env, cwd=REPO, capture_output=True)
            if done.returncode == 0:
                break
        else:
            raise SystemExit(f"cannot create the demo user: {done.stderr.strip()}")
        print(f"\nnvr is starting: http://{args.listen}/  (sign in as admin / {password})")
        print(f"API: http://{args.listen}/api/cameras (same sign-in, or a token from `nvr token create`)")
        print("Ctrl-C stops everything.\n", flush=True)
        daemon = subprocess.Popen([*nvr, "run", "-c", str(config_path)], env=env, cwd=REPO)
        try:
            return daemon.wait()
        except KeyboardInterrupt:
            daemon.send_signal(signal.SIGTERM)
            return daemon.wait(15)
    finally:
        for cam in cams.values():
            cam.stop()
        if gateway is not None:
            gateway.stop()


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # while starting: everything started so far was stopped on the way out
        raise SystemExit(130) from None
