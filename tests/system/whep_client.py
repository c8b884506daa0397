"""Open one WHEP live session and receive frames: ``whep_client.py BASE_URL CAMERA TOKEN``.

Run by tests/system inside the station container's network namespace; prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription


async def main(base_url: str, camera: str, token: str) -> None:
    started = time.monotonic()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{base_url}/api/cameras/{camera}/whep", data=pc.localDescription.sdp,
                             headers={"Content-Type": "application/sdp"}) as resp:
            answer = await resp.text()
            if resp.status != 201:
                raise SystemExit(f"WHEP offer answered {resp.status}: {answer}")
            location = resp.headers["Location"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        track = pc.getTransceivers()[0].receiver.track
        frames = [await asyncio.wait_for(track.recv(), 20) for _ in range(10)]
        first = time.monotonic() - started
        async with http.delete(base_url + location) as resp:
            deleted = resp.status
    await pc.close()
    last = frames[-1]
    print(json.dumps({"frames": len(frames), "width": getattr(last, "width", None), "height": getattr(last, "height", None),
                      "seconds_to_10_frames": round(first, 2), "delete": deleted}))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
