// One live video over WHEP (RFC 9725), shared by the station console and the central console.
// Plain JavaScript, no dependencies: station networks are closed.
"use strict";

// Every sentence a tile shows about why its live view is refused, keyed by the station's error code (English
// only so far: the i18n catalogue can take them over as they are). A code missing here shows the station's
// own message.
/** The tile's words for a refusal the daemon names by code (strings in the i18n catalogues); null for others. */
function liveRefusal(code) {
  const { t } = window.nvrI18n;
  const substream = "live_url";
  switch (code) {
    case "h265_needs_transcode":
      return t("live.error.h265_needs_transcode", { setting: "live.transcode: h264", per_camera: "live.cameras", substream });
    case "codec_unsupported": return t("live.error.codec_unsupported", { substream });
    case "profile_unsupported": return t("live.error.profile_unsupported", { substream, profiles: "Main / High" });
    case "profile_not_offered": return t("live.error.profile_not_offered", { substream, profile: "Main" });
    case "level_not_offered": return t("live.error.level_not_offered", { substream });
    case "no_common_codec": return t("live.error.no_common_codec");
    case "no_udp_candidates": return t("live.error.no_udp_candidates", { setting: "live.ice_servers" });
    case "too_many_transcodes": return t("live.error.too_many_transcodes", { setting: "live.max_transcodes" });
    case "too_many_sessions": return t("live.error.too_many_sessions");
    case "too_many_sessions_per_user": return t("live.error.too_many_sessions_per_user");
    default: return null;
  }
}

const STALL_MS = 8000;           // no new decoded frame for this long while the camera is online: reconnect
// An attempt whose peer connection is not up yet gets as long as the station waits for it (its default
// live.connect_timeout_seconds). ICE and DTLS take four or more round trips: over a slow link (1.5 s each
// way, a satellite or congested uplink) they take longer than STALL_MS, and an attempt torn down at STALL_MS
// never connected at all, however often it was tried.
const CONNECT_MS = 20000;
const ICE_SERVERS = new Map();  // WHEP endpoint -> the STUN/TURN servers its Link headers named (RFC 9725 4.6)
const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000];

/** One tile's WHEP session: connects, watches for stalls, reconnects with backoff. */
class LivePlayer {
  constructor(url, video, onStatus) {
    this.url = url;                 // the WHEP endpoint: the station's, or the central console's relay
    this.video = video;
    this.onStatus = onStatus;       // (kind, detail) => void, for the tile's message
    this.pc = null;
    this.location = null;
    this.stopped = false;
    this.attempt = 0;
    this.timer = null;
    this.lastFrames = 0;
    this.lastProgress = performance.now();
    this.connected = false;
    this.cameraOnline = true;
    this.hasAudio = false;
    this.errorCode = null;          // the station's error code of the last refusal, for the tile and tests
    this.watch = setInterval(() => this.checkProgress(), 1000);
  }

  start() { this.connect(); }

  async connect() {
    clearTimeout(this.timer);
    this.timer = null;
    this.teardown();
    if (this.stopped) return;
    if (!ICE_SERVERS.has(this.url)) ICE_SERVERS.set(this.url, await preflightIceServers(this.url));
    if (this.stopped || this.pc) return;
    const iceServers = ICE_SERVERS.get(this.url);
    const pc = new RTCPeerConnection({ iceServers });
    this.pc = pc;
    // Each attempt gets STALL_MS of its own to show a picture. Counted from the last picture instead, an
    // attempt after a stall was torn down by checkProgress within a second, before its offer was even
    // sent whenever ICE gathering took that long (an unreachable STUN or TURN server): it never got
    // through, however often it was tried.
    this.lastProgress = performance.now();
    this.lastFrames = 0;
    this.connected = false;         // this attempt's peer connection has not been up yet
    const stream = new MediaStream();
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.ontrack = (event) => {
      stream.addTrack(event.track);
      if (event.track.kind === "audio") this.hasAudio = true;
      if (this.video.srcObject !== stream) this.video.srcObject = stream;
      this.video.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (this.pc !== pc) return;
      if (pc.connectionState === "connected" && !this.connected) {
        this.connected = true;
        this.lastProgress = performance.now();  // the picture's STALL_MS from here
      }
      if (pc.connectionState === "failed" || pc.connectionState === "closed") this.retry(window.nvrI18n.t("live.reason.connection_lost"));
    };
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await iceGatheringDone(pc, 1500);
      if (this.pc !== pc) return;
      const response = await fetch(this.url, {
        method: "POST", headers: { "Content-Type": "application/sdp" }, body: pc.localDescription.sdp,
      });
      if (response.status !== 201) {
        const body = await response.json().catch(() => ({}));
        this.errorCode = body.error || null;
        const error = new Error(liveRefusal(body.error) || body.message || `HTTP ${response.status}`);
        error.permanent = response.status === 409 || response.status === 400;
        throw error;
      }
      this.errorCode = null;
      this.location = response.headers.get("Location");
      const answer = await response.text();
      if (this.pc !== pc) { this.release(this.location); return; }
      const named = iceServersFromLinks(response);
      ICE_SERVERS.set(this.url, named);  // fresh credentials for the next session
      if (iceServers.length === 0 && named.length > 0) {
        // An endpoint that names its servers only in answers (one without the OPTIONS pre-flight, as the
        // console relay was at first): start over with them at once, or a viewer on another network would
        // never connect.
        this.connect();
        return;
      }
      await pc.setRemoteDescription({ type: "answer", sdp: answer });
      this.lastProgress = performance.now();
      this.lastFrames = 0;
    } catch (error) {
      if (this.pc !== pc) return;
      if (error.permanent) {
        this.teardown();
        this.onStatus("error", error.message);
        // A wrong codec does not fix itself quickly; try again much later (config may change).
        this.timer = setTimeout(() => this.connect(), 60000);
      } else {
        this.retry(error.message || String(error));
      }
    }
  }

  retry(why) {
    if (this.stopped || this.timer) return;
    this.teardown();
    const delay = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    this.onStatus("reconnecting", why);
    this.timer = setTimeout(() => { this.timer = null; this.connect(); }, delay);
  }

  async framesDecoded() {
    if (!this.pc) return 0;
    const stats = await this.pc.getStats();
    let frames = 0;
    stats.forEach((report) => {
      if (report.type === "inbound-rtp" && report.kind === "video") frames = report.framesDecoded || 0;
    });
    return frames;
  }

  async checkProgress() {
    if (this.stopped || !this.pc || this.timer) return;
    const frames = await this.framesDecoded().catch(() => 0);
    const now = performance.now();
    if (frames > this.lastFrames) {
      this.lastFrames = frames;
      this.lastProgress = now;
      this.attempt = 0;
      this.onStatus("playing", "");
      return;
    }
    // While the camera is offline the session stays open and resumes by itself when it returns;
    // a stall with the camera online means our session is dead: start a new one.
    if (!this.cameraOnline) { this.lastProgress = now; return; }
    // Once this attempt was connected, a lost path (ICE disconnected) is a stall like any other.
    if (now - this.lastProgress > (this.connected ? STALL_MS : CONNECT_MS)) {
      this.retry(window.nvrI18n.t(this.connected ? "live.reason.no_picture" : "live.reason.no_connection"));
    }
  }

  setCameraOnline(online) {
    if (online && !this.cameraOnline) this.lastProgress = performance.now();
    this.cameraOnline = online;
  }

  release(location) {
    if (location) fetch(location, { method: "DELETE", keepalive: true }).catch(() => {});
  }

  teardown() {
    if (this.pc) {
      const pc = this.pc;
      this.pc = null;
      pc.ontrack = null;
      pc.onconnectionstatechange = null;
      pc.close();
    }
    this.release(this.location);
    this.location = null;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.watch);
    this.teardown();
    this.video.srcObject = null;
  }
}

/** The ICE servers an OPTIONS request to the endpoint names; [] when it names none or does not answer it. */
async function preflightIceServers(url) {
  try {
    const response = await fetch(url, { method: "OPTIONS" });
    return response.ok ? iceServersFromLinks(response) : [];
  } catch (error) {
    return [];
  }
}

/** RTCIceServer objects from `Link: <turn:...>; rel="ice-server"; username="..."; credential="..."` headers. */
function iceServersFromLinks(response) {
  const header = response.headers.get("Link");
  if (!header) return [];
  const servers = [];
  for (const link of header.split(/,\s*(?=<)/)) {
    const url = /^<([^>]*)>/.exec(link.trim());
    const params = {};
    for (const match of link.matchAll(/;\s*([a-z-]+)="((?:[^"\\]|\\.)*)"/g)) params[match[1]] = match[2].replace(/\\(.)/g, "$1");
    if (!url || params.rel !== "ice-server") continue;
    const server = { urls: url[1] };
    if (params.username !== undefined) server.username = params.username;
    if (params.credential !== undefined) server.credential = params.credential;
    servers.push(server);
  }
  return servers;
}

function iceGatheringDone(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); clearTimeout(timer); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}
