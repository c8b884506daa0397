#!/usr/bin/python3
"""Simulated IP camera: GStreamer RTSP server fed by a synthetic scene.

Run with Debian's /usr/bin/python3 (needs python3-gi, gir1.2-gst-rtsp-server-1.0,
python3-numpy and the GStreamer plugin packages).

    camsim.py --port 8554 [--host 127.0.0.1] [--path /stream] [--codec h264|h265]
        [--profile constrained-baseline|main|high]
        [--width 640] [--height 360] [--fps 15] [--gop N] [--bitrate-kbps 800]
        [--audio none|pcmu|pcma|aac] [--user NAME --password-env VAR]
        [--file PATH.h264] [--inband-only]
    camsim.py encode --out PATH.h264 --width 1920 --height 1080 --fps 25 --seconds 10
        --bitrate-kbps 4000 [--gop 50]

Fault commands on stdin (one per line, answered with "OK <cmd>" / "ERR <msg>" on stdout):
    normal | black | freeze | scene | blur | resolution WxH | quit
On startup prints exactly one line "READY rtsp://HOST:PORT/PATH" on stdout.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import signal
import sys
import threading
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gi  # noqa: E402

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
gi.require_version("GstSdp", "1.0")
import scene as scenemod  # noqa: E402
from gi.repository import GLib, GObject, Gst, GstRtspServer, GstSdp  # noqa: E402,F401


def log(msg: str) -> None:
    sys.stderr.write(f"camsim[{os.getpid()}]: {msg}\n")
    sys.stderr.flush()


def say(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        pass


def set_pdeathsig() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except OSError as e:  # pragma: no cover
        log(f"prctl failed: {e}")


# ---------------------------------------------------------------------------- H.264 file


def split_access_units(data: bytes) -> list[tuple[bytes, bool]]:
    """Split an H.264 Annex-B byte stream into access units -> [(au_bytes, is_idr)]."""
    starts = []  # (start_code_pos, nal_payload_pos)
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        sc = i - 1 if i > 0 and data[i - 1] == 0 else i
        starts.append((sc, i + 3))
        i = data.find(b"\x00\x00\x01", i + 3)
    aus: list[tuple[bytes, bool]] = []
    au_start = None
    has_vcl = False
    idr = False
    for sc, p in starts:
        if p >= len(data):
            break
        t = data[p] & 0x1F
        new_au = False
        if t == 9 or t in (6, 7, 8, 14, 15, 16, 17, 18) and has_vcl:
            new_au = True
        elif t in (1, 5) and has_vcl and p + 1 < len(data) and data[p + 1] & 0x80:
            new_au = True  # first_mb_in_slice == 0
        if new_au and au_start is not None:
            aus.append((data[au_start:sc], idr))
            au_start, has_vcl, idr = None, False, False
        if au_start is None:
            au_start = sc
        if t in (1, 5):
            has_vcl = True
        if t == 5:
            idr = True
    if au_start is not None and has_vcl:
        aus.append((data[au_start:], idr))
    # start at the first IDR so every loop begins decodable
    for k, (_, is_idr) in enumerate(aus):
        if is_idr:
            return aus[k:]
    raise ValueError("no IDR access unit found in file")


def _has_sps_pps(au: bytes) -> bool:
    types = set()
    i = au.find(b"\x00\x00\x01")
    while i >= 0 and i + 3 < len(au):
        types.add(au[i + 3] & 0x1F)
        i = au.find(b"\x00\x00\x01", i + 3)
    return 7 in types and 8 in types


# ---------------------------------------------------------------------------- media


def _strip_sprop(sdp) -> None:
    """Remove sprop-* parameters (out-of-band SPS/PPS/VPS) from every fmtp attribute."""
    for mi in range(sdp.medias_len()):
        m = sdp.get_media(mi)
        for ai in reversed(range(m.attributes_len())):
            a = m.get_attribute(ai)
            if a.key == "fmtp" and a.value and "sprop-" in a.value:
                pt, _, params = a.value.partition(" ")
                kept = [p.strip() for p in params.split(";")
                        if p.strip() and not p.strip().startswith("sprop-")]
                if kept:
                    na = GstSdp.SDPAttribute()
                    na.set("fmtp", pt + " " + ";".join(kept))
                    m.replace_attribute(ai, na)
                else:
                    m.remove_attribute(ai)


def make_inband_media_type():
    """Defined lazily: registering a GstRTSPMedia subclass needs Gst.init() first."""

    class InbandOnlyMedia(GstRtspServer.RTSPMedia):
        def do_setup_sdp(self, sdp, info):
            ok = GstRtspServer.RTSPMedia.do_setup_sdp(self, sdp, info)
            try:
                _strip_sprop(sdp)
            except Exception as e:  # noqa: BLE001 - best effort
                log(f"inband-only SDP rewrite failed: {e!r}")
            return ok

    return InbandOnlyMedia


class Camera:
    def __init__(self, args):
        self.args = args
        self.fps = args.fps
        self.width, self.height = args.width, args.height
        self.mode = "normal"
        self.lock = threading.Lock()
        self.appsrcs: dict = {}  # appsrc -> state dict (per-appsrc cursor for --file)
        self.frame_no = 0
        self.t0 = time.monotonic()
        self.next_due = self.t0
        self.last_frame: bytes | None = None
        self.frozen: bytes | None = None
        self.aus = None
        if args.file:
            with open(args.file, "rb") as f:
                self.aus = split_access_units(f.read())
            self.file_has_inband_ps = all(_has_sps_pps(au) for au, idr in self.aus if idr)
            log(f"loaded {args.file}: {len(self.aus)} access units, "
                f"SPS/PPS before every IDR: {self.file_has_inband_ps}")
            self.scenes = None
        else:
            self._make_scenes()
        self.loop = GLib.MainLoop()

    # ---------------------------------------------------------------- scene
    def _make_scenes(self):
        self.scenes = {
            0: scenemod.Scene(self.width, self.height, 0),
            1: scenemod.Scene(self.width, self.height, 1),
        }
        self.black = scenemod.black_frame(self.width, self.height)

    def caps(self) -> Gst.Caps:
        if self.aus is not None:
            s = f"video/x-h264,stream-format=byte-stream,alignment=au,framerate={self.fps}/1"
        else:
            s = (f"video/x-raw,format=I420,width={self.width},height={self.height},framerate={self.fps}/1,"
                 "pixel-aspect-ratio=1/1,interlace-mode=progressive")
        return Gst.Caps.from_string(s)

    def render(self) -> bytes:
        t = time.monotonic() - self.t0
        n = self.frame_no
        m = self.mode
        if m == "freeze":
            if self.frozen is None:
                self.frozen = self.last_frame or bytes(self.scenes[0].render(t, n))
            return self.frozen
        if m == "black":
            return self.black
        if m == "blur":
            return self.scenes[0].render_blurred(t, n).tobytes()
        sc = self.scenes[1 if m == "scene" else 0]
        return sc.render(t, n).tobytes()

    # ---------------------------------------------------------------- pipeline
    def launch(self) -> str:
        a = self.args
        gop = a.gop or 2 * a.fps
        if a.file:
            # rtph264pay config-interval=-1 re-inserts SPS/PPS before *every* IDR slice,
            # which splits multi-slice IDR frames for clients; skip it when the file
            # already carries SPS/PPS in-band before each IDR.
            v = ("appsrc name=vsrc ! h264parse ! video/x-h264,alignment=au ! "
                 f"rtph264pay name=pay0 pt=96 config-interval={0 if self.file_has_inband_ps else -1}")
        elif a.codec == "h264":
            # x264 writes the least profile its tools need: the ultrafast preset needs only Constrained
            # Baseline, CABAC makes it Main, and the 8x8 transform High.
            tools = {"constrained-baseline": "", "main": "cabac=true dct8x8=false ",
                     "high": "cabac=true dct8x8=true "}[a.profile]
            v = ("appsrc name=vsrc ! queue max-size-buffers=3 leaky=downstream ! "
                 f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate={a.bitrate_kbps} "
                 f"bframes=0 threads=1 sliced-threads=false b-adapt=false {tools}! "
                 f"video/x-h264,profile={a.profile} ! h264parse ! video/x-h264,alignment=au ! "
                 "rtph264pay name=pay0 pt=96 config-interval=-1")
        else:
            v = ("appsrc name=vsrc ! queue max-size-buffers=3 leaky=downstream ! "
                 f"x265enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate={a.bitrate_kbps} "
                 "option-string=\"pools=1:frame-threads=1:lookahead-slices=0:bframes=0:repeat-headers=1\" ! "
                 "h265parse ! rtph265pay name=pay0 pt=96 config-interval=-1")
        au = ""
        if a.audio in ("pcmu", "pcma"):
            enc, pay = ("mulawenc", "rtppcmupay") if a.audio == "pcmu" else ("alawenc", "rtppcmapay")
            au = (" audiotestsrc name=asrc is-live=true wave=sine freq=440 volume=0.2 samplesperbuffer=160 ! "
                  f"audio/x-raw,rate=8000,channels=1 ! {enc} ! {pay} name=pay1 pt={0 if a.audio == 'pcmu' else 8}")
        elif a.audio == "aac":
            enc = "avenc_aac" if Gst.ElementFactory.find("avenc_aac") else "voaacenc"
            au = (" audiotestsrc name=asrc is-live=true wave=sine freq=440 volume=0.2 samplesperbuffer=1024 ! "
                  "audioconvert ! audioresample ! audio/x-raw,rate=16000,channels=1 ! "
                  f"{enc} bitrate=32000 ! aacparse ! rtpmp4gpay name=pay1 pt=97")
        return f"( {v} {au} )"

    def on_media_configure(self, factory, media):
        appsrc = media.get_element().get_by_name("vsrc")
        appsrc.set_property("is-live", True)
        appsrc.set_property("format", Gst.Format.TIME)
        appsrc.set_property("do-timestamp", True)
        appsrc.set_property("block", False)
        appsrc.set_property("max-buffers", 4)
        try:
            appsrc.set_property("leaky-type", 2)  # GST_APP_LEAKY_TYPE_DOWNSTREAM (>= 1.20)
        except TypeError:
            pass
        appsrc.set_property("caps", self.caps())
        asrc = media.get_element().get_by_name("asrc")
        if asrc is not None:
            asrc.get_static_pad("src").add_probe(Gst.PadProbeType.QUERY_UPSTREAM, self._unseekable_probe)
        with self.lock:
            self.appsrcs[appsrc] = {"pos": 0, "media": media}
        log(f"media configured ({len(self.appsrcs)} live)")

        def forget(*_):
            with self.lock:
                if self.appsrcs.pop(appsrc, None) is not None:
                    log(f"media unprepared ({len(self.appsrcs)} live)")

        media.connect("unprepared", forget)
        media.connect("removed-stream", forget)

    @staticmethod
    def _unseekable_probe(pad, info):
        # audiotestsrc claims to be seekable; then the server seeks the whole (live,
        # appsrc-fed) pipeline on PLAY, the seek fails and PLAY gets 503.  Answer
        # the SEEKING query with "not seekable" like a real live camera would.
        q = info.get_query()
        if q is not None and q.type == Gst.QueryType.SEEKING:
            # a fresh SEEKING query already says seekable=FALSE; the query is not
            # writable from Python (extra ref), so just mark it handled as-is.
            return Gst.PadProbeReturn.HANDLED
        return Gst.PadProbeReturn.OK

    # ---------------------------------------------------------------- frame clock
    def tick(self):
        now = time.monotonic()
        period = 1.0 / self.fps
        with self.lock:
            targets = list(self.appsrcs.items())
        if targets:
            try:
                if self.aus is None:
                    data = self.render()
                    self.last_frame = data
                    for src, _st in targets:
                        buf = Gst.Buffer.new_wrapped(data)
                        buf.duration = int(Gst.SECOND * period)
                        src.emit("push-buffer", buf)
                else:
                    for src, st in targets:
                        au, _ = self.aus[st["pos"]]
                        st["pos"] = (st["pos"] + 1) % len(self.aus)
                        buf = Gst.Buffer.new_wrapped(au)
                        buf.duration = int(Gst.SECOND * period)
                        src.emit("push-buffer", buf)
            except Exception as e:  # noqa: BLE001 - keep the clock running no matter what
                log(f"tick error: {e!r}")
        self.frame_no += 1
        self.next_due += period
        if self.next_due < now - 1.0:  # we were stalled (SIGSTOP); don't burst to catch up
            self.next_due = now + period
        delay = max(1, int((self.next_due - time.monotonic()) * 1000))
        GLib.timeout_add(delay, self.tick)
        return False

    # ---------------------------------------------------------------- commands
    def handle_command(self, line: str) -> None:
        cmd = line.strip()
        if not cmd:
            return
        word = cmd.split()[0].lower()
        try:
            if word == "quit":
                say("OK " + cmd)
                self.loop.quit()
                return
            if self.aus is not None and word != "normal":
                raise ValueError("fault commands are not supported with --file")
            if word in ("normal", "black", "scene", "blur"):
                self.mode = word
                self.frozen = None
            elif word == "freeze":
                if self.mode != "freeze":
                    self.frozen = self.last_frame
                    self.mode = "freeze"
            elif word == "resolution":
                m = re.fullmatch(r"resolution\s+(\d+)\s*[xX]\s*(\d+)", cmd)
                if not m:
                    raise ValueError("usage: resolution WxH")
                w, h = int(m.group(1)), int(m.group(2))
                if w % 2 or h % 2 or not (16 <= w <= 4096 and 16 <= h <= 4096):
                    raise ValueError("resolution must be even and within 16..4096")
                self.width, self.height = w, h
                self._make_scenes()
                self.frozen = None
                self.last_frame = None
                if self.mode == "freeze":
                    self.mode = "normal"
                caps = self.caps()
                with self.lock:
                    for src in list(self.appsrcs):
                        src.set_property("caps", caps)
            else:
                raise ValueError(f"unknown command {word!r}")
        except Exception as e:  # noqa: BLE001 - reported to the controller
            say(f"ERR {e}")
            return
        log(f"command: {cmd}")
        say("OK " + cmd)

    def on_stdin(self, fd, cond):
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return True
        except OSError:
            chunk = b""
        if not chunk:
            log("stdin closed; continuing")
            return False
        self._stdin_buf += chunk
        while b"\n" in self._stdin_buf:
            line, self._stdin_buf = self._stdin_buf.split(b"\n", 1)
            self.handle_command(line.decode("utf-8", "replace"))
        return True

    # ---------------------------------------------------------------- run
    def run(self) -> int:
        a = self.args
        server = GstRtspServer.RTSPServer()
        server.set_address(a.host)
        server.set_service(str(a.port))
        server.set_backlog(16)
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(self.launch())
        factory.set_shared(True)
        if a.inband_only:
            factory.set_media_gtype(make_inband_media_type().__gtype__)
        factory.connect("media-configure", self.on_media_configure)
        if a.user:
            password = os.environ.get(a.password_env or "", None)
            if password is None:
                log(f"--user given but password env var {a.password_env!r} is not set")
                return 2
            auth = GstRtspServer.RTSPAuth()
            token = GstRtspServer.RTSPToken()
            token.set_string("media.factory.role", a.user)
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(a.user, password), token)
            server.set_auth(auth)
            perms = GstRtspServer.RTSPPermissions()
            perms.add_permission_for_role(a.user, "media.factory.access", True)
            perms.add_permission_for_role(a.user, "media.factory.construct", True)
            factory.set_permissions(perms)
        server.get_mount_points().add_factory(a.path, factory)
        if server.attach(None) == 0:
            log(f"cannot listen on {a.host}:{a.port}")
            return 3

        for sig in (signal.SIGTERM, signal.SIGINT):
            GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, self._on_signal, sig)
        self._stdin_buf = b""
        try:
            os.set_blocking(0, False)
            GLib.io_add_watch(0, GLib.PRIORITY_DEFAULT, GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR,
                              self.on_stdin)
        except OSError:
            pass
        # orphan watchdog (PDEATHSIG is per-thread; this covers the other cases)
        ppid = os.getppid()
        GLib.timeout_add_seconds(1, lambda: (os.getppid() == ppid) or self.loop.quit())
        self.next_due = time.monotonic()
        GLib.idle_add(self.tick)
        host = a.host if ":" not in a.host else f"[{a.host}]"
        say(f"READY rtsp://{host}:{a.port}{a.path}")
        audio = f" audio={a.audio}" if a.audio != "none" else ""
        log(f"serving {'file' if a.file else a.codec} {self.width}x{self.height}@{self.fps}{audio}")
        self.loop.run()
        log("exiting")
        return 0

    def _on_signal(self, sig):
        log(f"signal {sig}")
        self.loop.quit()
        return False


# ---------------------------------------------------------------------------- encode


def encode(args) -> int:
    gop = args.gop or 2 * args.fps
    sc = scenemod.Scene(args.width, args.height, 0)
    pipe = Gst.parse_launch(
        f"appsrc name=src is-live=false format=time block=true max-bytes={sc.frame_size * 4} "
        f"caps=video/x-raw,format=I420,width={args.width},height={args.height},framerate={args.fps}/1 ! "
        f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate={args.bitrate_kbps} bframes=0 ! "
        "video/x-h264,profile=constrained-baseline ! h264parse ! "
        f"video/x-h264,stream-format=byte-stream,alignment=au ! filesink location=\"{args.out}\"")
    src = pipe.get_by_name("src")
    pipe.set_state(Gst.State.PLAYING)
    n = int(round(args.seconds * args.fps))
    dur = Gst.SECOND // args.fps
    wall0 = time.time()
    for i in range(n):
        buf = Gst.Buffer.new_wrapped(sc.render(i / args.fps, i, wall0 + i / args.fps).tobytes())
        buf.pts = i * Gst.SECOND // args.fps
        buf.duration = dur
        if src.emit("push-buffer", buf) != Gst.FlowReturn.OK:
            log(f"push failed at frame {i}")
            break
    src.emit("end-of-stream")
    msg = pipe.get_bus().timed_pop_filtered(120 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    pipe.set_state(Gst.State.NULL)
    if msg is None or msg.type == Gst.MessageType.ERROR:
        log(f"encode failed: {msg.parse_error()[0].message if msg else 'timeout'}")
        return 1
    log(f"wrote {args.out} ({n} frames)")
    return 0


# ---------------------------------------------------------------------------- main


def _even(v: str) -> int:
    i = int(v)
    if i <= 0 or i % 2:
        raise argparse.ArgumentTypeError("must be a positive even number")
    return i


def parse_args(argv):
    if argv and argv[0] == "encode":
        p = argparse.ArgumentParser(prog="camsim.py encode")
        p.add_argument("--out", required=True)
        p.add_argument("--width", type=_even, default=1920)
        p.add_argument("--height", type=_even, default=1080)
        p.add_argument("--fps", type=int, default=25)
        p.add_argument("--seconds", type=float, default=10)
        p.add_argument("--bitrate-kbps", type=int, default=4000)
        p.add_argument("--gop", type=int, default=None)
        a = p.parse_args(argv[1:])
        a.command = "encode"
        return a
    p = argparse.ArgumentParser(prog="camsim.py", description="simulated RTSP IP camera")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--path", default="/stream")
    p.add_argument("--codec", choices=("h264", "h265"), default="h264")
    p.add_argument("--profile", choices=("constrained-baseline", "main", "high"), default="constrained-baseline",
                   help="H.264 profile of the encoder (the SPS says it; live view must announce it)")
    p.add_argument("--width", type=_even, default=640)
    p.add_argument("--height", type=_even, default=360)
    p.add_argument("--fps", type=int, default=15)
    p.add_argument("--gop", type=int, default=None, help="keyframe interval in frames (default 2*fps)")
    p.add_argument("--bitrate-kbps", type=int, default=800)
    p.add_argument("--audio", choices=("none", "pcmu", "pcma", "aac"), default="none")
    p.add_argument("--user")
    p.add_argument("--password-env", help="name of the env var holding the password")
    p.add_argument("--file", help="pre-encoded H.264 Annex-B file, looped")
    p.add_argument("--inband-only", action="store_true")
    a = p.parse_args(argv)
    if not a.path.startswith("/"):
        a.path = "/" + a.path
    if a.user and not a.password_env:
        p.error("--user requires --password-env")
    if a.file and a.codec != "h264":
        p.error("--file supports H.264 only")
    a.command = "serve"
    return a


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    set_pdeathsig()
    Gst.init(None)
    if args.command == "encode":
        return encode(args)
    if os.getppid() == 1:
        pass  # started detached on purpose; fine
    cam = Camera(args)
    return cam.run()


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)  # don't wait on GStreamer streaming threads at interpreter shutdown
