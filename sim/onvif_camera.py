"""A simulated ONVIF camera: device, media and event services over SOAP, in front of a camsim RTSP stream.

What a real camera does and tests need: ``GetSystemDateAndTime`` answers without
authentication and reports the camera's own clock (``clock_offset`` seconds off
the host's); every other operation needs a WS-Security ``UsernameToken``
(PasswordDigest, or PasswordText) whose ``Created`` is within five minutes of the
camera's clock, else a ``ter:NotAuthorized`` fault; PullPoint subscriptions
deliver the events the test raises (:meth:`OnvifCamera.raise_event`: tamper,
video loss, digital input) and vanish when the camera "reboots"
(:meth:`OnvifCamera.reboot`); unknown operations get ``ter:ActionNotSupported``.
The answers follow the ONVIF WSDLs' message shapes (the onvif-zeep-async client,
which ships those WSDLs, parses them in tests/test_onvif.py).

The SOAP server runs on a thread of its own with its own event loop, so a
test in plain synchronous code can start it beside :class:`sim.client.SimCamera`.
Run under the project's virtualenv (it needs aiohttp and lxml).

    with OnvifCamera(rtsp_url=cam.url, user="admin", password="pw", clock_offset=90) as onvif:
        onvif.device_url  # http://127.0.0.1:PORT/onvif/device_service
        onvif.raise_event(TAMPER, True)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web
from lxml import etree

from sim.network import NetworkRelay
from sim.replay_server import ReplayServer
from sim.sd_card import SdCard

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "wsse": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd",
    "wsu": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd",
    "tds": "http://www.onvif.org/ver10/device/wsdl",
    "trt": "http://www.onvif.org/ver10/media/wsdl",
    "tev": "http://www.onvif.org/ver10/events/wsdl",
    "tt": "http://www.onvif.org/ver10/schema",
    "wsnt": "http://docs.oasis-open.org/wsn/b-2",
    "wsa": "http://www.w3.org/2005/08/addressing",
    "tns1": "http://www.onvif.org/ver10/topics",
    "ter": "http://www.onvif.org/ver10/error",
    "tse": "http://www.onvif.org/ver10/search/wsdl",
    "trp": "http://www.onvif.org/ver10/replay/wsdl",
    "trc": "http://www.onvif.org/ver10/recording/wsdl",
}
_XMLNS = " ".join(f"xmlns:{prefix}={quoteattr(uri)}" for prefix, uri in NS.items())
_TOPIC_DIALECT = "http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet"

# Topics as real cameras name them (Hikvision, Axis and Dahua use these for tamper, video loss, inputs).
TAMPER = "tns1:VideoSource/GlobalSceneChange/ImagingService"
VIDEO_LOSS = "tns1:VideoSource/SignalLoss"
DIGITAL_INPUT = "tns1:Device/Trigger/DigitalInput"
MOTION = "tns1:RuleEngine/CellMotionDetector/Motion"
_STATE_ITEM = {TAMPER: "State", VIDEO_LOSS: "State", DIGITAL_INPUT: "LogicalState", MOTION: "IsMotion"}
_SOURCE_ITEM = {DIGITAL_INPUT: ("InputToken", "DI_0")}


@dataclass
class _Subscription:
    id: str
    expires: float  # host time
    queue: list[str] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class SoapFault(Exception):
    def __init__(self, code: str, subcode: str, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.code, self.subcode, self.reason, self.status = code, subcode, reason, status


class OnvifCamera:
    def __init__(self, *, rtsp_url: str, user: str | None = "admin", password: str | None = "admin",
                 clock_offset: float = 0.0, host: str = "127.0.0.1", port: int = 0,
                 manufacturer: str = "NVR-Sim", model: str = "SimCam 2000", firmware: str = "1.4.2",
                 serial: str | None = None, substream_url: str | None = None, events: bool = True,
                 edge_storage: bool = False, network: bool = False, card_max_seconds: float = 3600.0) -> None:
        self.events = events  # False: a camera without an event service (older or cheaper models)
        # edge_storage: an SD card recording the encoder (rtsp_url) whatever the network does, with the
        # search, recording and replay services of ONVIF Profile G (sim/sd_card.py, sim/replay_server.py).
        self.edge_storage = edge_storage
        self.card: SdCard | None = None
        self.replay: ReplayServer | None = None
        self.card_max_seconds = card_max_seconds
        self.search_fault: str | None = None  # set: every search and replay request gets this SOAP fault
        self._searches: dict[str, float] = {}  # search token -> when it lapses (host time)
        # network (or edge_storage): the NVR reaches the stream through a relay a test can cut (sim/network.py).
        self.network: NetworkRelay | None = None
        self._network_wanted = network or edge_storage
        self.network_cut = False
        self.rtsp_url, self.substream_url = rtsp_url, substream_url
        self.user, self.password = user, password
        self.clock_offset = clock_offset
        self.host, self.port = host, port
        self.manufacturer, self.model, self.firmware = manufacturer, model, firmware
        self.serial = serial or uuid.uuid4().hex[:12].upper()
        self.requests: list[str] = []  # operation names, in order (for tests)
        self.auth_failures = 0
        self.reboots = 0
        self._subs: dict[str, _Subscription] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._down = False
        self._publisher: Any = None
        self._polls: set[asyncio.Event] = set()  # wake-ups of PullMessages waiting for events

    # -- control, from any thread ----------------------------------------------------------

    @property
    def live_url(self) -> str:
        """The stream as the NVR reaches it: through the camera's network when it has one."""
        if self.network is None:
            return self.rtsp_url
        parts = urllib.parse.urlsplit(self.rtsp_url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"{self.network.host}:{self.network.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))

    @property
    def recording_token(self) -> str:
        return f"SD_{self.serial}"

    def cut_network(self) -> None:
        """The camera's network goes dead (the camera records on to its card): stream and SOAP stop answering."""
        assert self.network is not None, "made without network=True"
        self.network_cut = True
        self.network.cut()

    def restore_network(self) -> None:
        assert self.network is not None
        self.network.restore()
        self.network_cut = False
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._net_up.set)

    @property
    def device_url(self) -> str:
        return f"http://{self.host}:{self.port}/onvif/device_service"

    def url_with(self, user: str, password_ref: str) -> str:
        """The device URL with credentials (``password_ref`` as written in config, e.g. ``${PASS}``)."""
        return f"http://{user}:{password_ref}@{self.host}:{self.port}/onvif/device_service"

    def start(self) -> OnvifCamera:
        if self._network_wanted:
            parts = urllib.parse.urlsplit(self.rtsp_url)
            self.network = NetworkRelay(parts.hostname or "127.0.0.1", parts.port or 554, host=self.host).start()
        if self.edge_storage:
            self.card = SdCard(self.rtsp_url, lambda: self.now().timestamp(), max_seconds=self.card_max_seconds).start()
        self._thread = threading.Thread(target=self._serve, name=f"onvif-sim:{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the ONVIF simulator did not start")
        return self

    def announce(self) -> OnvifCamera:
        """Answer WS-Discovery probes (multicast 239.255.255.250:3702, and unicast) as an ONVIF camera does."""
        import socket

        from wsdiscovery import QName, Scope
        from wsdiscovery.publishing import ThreadedWSPublishing
        from wsdiscovery.threaded import AddressMonitorThread, NetworkingThreadIPv4

        class V4Publishing(ThreadedWSPublishing):  # type: ignore[misc]
            # The library's IPv6 thread dies answering an IPv4 prober; the simulated camera is IPv4 only.
            def _startThreads(self) -> None:
                if self._networkingThread_v4 is None:
                    self._networkingThread_v4 = NetworkingThreadIPv4(self)
                    self._networkingThread_v4.start()
                    self._addrsMonitorThread_v4 = AddressMonitorThread(self, socket.AF_INET)
                    self._addrsMonitorThread_v4.start()

        publisher = V4Publishing()
        publisher.start()
        publisher.publishService(
            types=[QName("http://www.onvif.org/ver10/network/wsdl", "NetworkVideoTransmitter", "dn")],
            scopes=[Scope(f"onvif://www.onvif.org/{part}") for part in (
                "type/video_encoder", "Profile/Streaming", *(["Profile/G"] if self.edge_storage else []),
                f"name/{self.manufacturer.replace(' ', '_')}",
                f"hardware/{self.model.replace(' ', '_')}", "location/station")],
            xAddrs=[self.device_url])
        self._publisher = publisher
        return self

    def stop(self) -> None:
        if self.card is not None:
            self.card.stop()
        if self.network is not None:
            self.network.stop()
        if self._publisher is not None:
            self._publisher.stop()
            self._publisher = None
        if self._loop is not None and self._runner is not None:
            def end_polls() -> None:
                for wake in self._polls:
                    wake.set()
                self._subs.clear()
            self._loop.call_soon_threadsafe(end_polls)  # pending PullMessages answer now, not at their timeout
            self._loop.call_soon_threadsafe(self._net_up.set)
            if self.replay is not None:
                asyncio.run_coroutine_threadsafe(self.replay.close(), self._loop).result(10)
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = self._runner = self._thread = None

    def __enter__(self) -> OnvifCamera:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def raise_event(self, topic: str, state: bool, source: tuple[str, str] | None = None) -> None:
        """The camera's own analytics (or an input) changed state: queue it for every subscriber."""
        self._call(self._queue_event, topic, state, source or _SOURCE_ITEM.get(topic, (
            "VideoSourceConfigurationToken", "vsconf0")))

    def reboot(self, down_seconds: float = 0.0) -> None:
        """Subscriptions are lost, as on a real reboot; the services refuse requests for ``down_seconds``."""
        def go() -> None:
            self.reboots += 1
            self._subs.clear()
            for wake in self._polls:
                wake.set()  # a pending PullMessages ends (with a fault: its subscription is gone)
            self._down = True
            assert self._loop is not None
            self._loop.call_later(down_seconds, self._up)
        self._call(go)

    def subscriptions(self) -> int:
        return len(self._subs)

    def _up(self) -> None:
        self._down = False

    def _call(self, fn: Any, *args: Any) -> None:
        assert self._loop is not None
        done = threading.Event()

        def run() -> None:
            try:
                fn(*args)
            finally:
                done.set()
        self._loop.call_soon_threadsafe(run)
        done.wait(5)

    # -- server ----------------------------------------------------------------------------

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._net_up = asyncio.Event()
        if self.card is not None:
            self.replay = ReplayServer(self.card, self.recording_token, user=self.user, password=self.password,
                                       host=self.host)
            loop.run_until_complete(self.replay.start())
        app = web.Application(client_max_size=256 * 1024)
        app.router.add_post("/onvif/{service}", self._handle)
        app.router.add_post("/onvif/subscription/{sub}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, self.host, self.port)
        loop.run_until_complete(site.start())
        if not self.port:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def now(self) -> dt.datetime:
        """The camera's clock."""
        return dt.datetime.fromtimestamp(time.time() + self.clock_offset, dt.UTC)

    async def _handle(self, request: web.Request) -> web.Response:
        if self._down:
            return web.Response(status=503, text="rebooting")
        if self.network_cut:  # the request is lost on the dead link: no answer, ever
            self._net_up.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._net_up.wait(), 30)
            if request.transport is not None:  # None: the client gave up waiting
                request.transport.abort()
            return web.Response(status=503)
        body = await request.read()
        try:
            envelope = etree.fromstring(body, etree.XMLParser(resolve_entities=False, no_network=True))
            operation = envelope.find("s:Body", NS)[0]  # type: ignore[index]
        except (etree.XMLSyntaxError, TypeError, IndexError):
            return _fault(SoapFault("s:Sender", "ter:WellFormed", "the request is not a SOAP envelope"))
        name = etree.QName(operation).localname
        self.requests.append(name)
        try:
            if name != "GetSystemDateAndTime":
                self._authenticate(envelope)
            handler = getattr(self, f"_op_{name}", None)
            if handler is None:
                raise SoapFault("s:Receiver", "ter:ActionNotSupported", f"{name} is not supported")
            answer = await handler(operation, request)
        except SoapFault as fault:
            return _fault(fault)
        return web.Response(body=_envelope(answer), content_type="application/soap+xml", charset="utf-8")

    def _authenticate(self, envelope: etree._Element) -> None:
        if self.user is None:
            return
        token = envelope.find("s:Header/wsse:Security/wsse:UsernameToken", NS)
        refuse = SoapFault("s:Sender", "ter:NotAuthorized", "Sender not Authorized")
        if token is None:
            self.auth_failures += 1
            raise refuse
        user = token.findtext("wsse:Username", "", NS)
        password_el = token.find("wsse:Password", NS)
        given = password_el.text or "" if password_el is not None else ""
        nonce = token.findtext("wsse:Nonce", "", NS)
        created = token.findtext("wsu:Created", "", NS)
        digest = password_el is not None and password_el.get("Type", "").endswith("#PasswordDigest")
        try:
            if digest:
                expected = base64.b64encode(hashlib.sha1(
                    base64.b64decode(nonce) + created.encode() + (self.password or "").encode()).digest()).decode()
            else:
                expected = self.password or ""
            stamp = dt.datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None
        except (ValueError, TypeError):
            self.auth_failures += 1
            raise refuse from None
        # A real camera refuses a token created too far from its own clock (replay protection).
        if user != self.user or given != expected or (
                stamp is not None and abs((stamp - self.now()).total_seconds()) > 300):
            self.auth_failures += 1
            raise refuse

    # -- device ----------------------------------------------------------------------------

    async def _op_GetSystemDateAndTime(self, op: etree._Element, request: web.Request) -> str:
        now = self.now()
        return (
            "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime>"
            "<tt:DateTimeType>Manual</tt:DateTimeType><tt:DaylightSavings>false</tt:DaylightSavings>"
            "<tt:TimeZone><tt:TZ>UTC0</tt:TZ></tt:TimeZone>"
            f"<tt:UTCDateTime>{_datetime(now)}</tt:UTCDateTime>"
            f"<tt:LocalDateTime>{_datetime(now)}</tt:LocalDateTime>"
            "</tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>"
        )

    async def _op_GetDeviceInformation(self, op: etree._Element, request: web.Request) -> str:
        return (
            f"<tds:GetDeviceInformationResponse><tds:Manufacturer>{escape(self.manufacturer)}</tds:Manufacturer>"
            f"<tds:Model>{escape(self.model)}</tds:Model><tds:FirmwareVersion>{escape(self.firmware)}"
            f"</tds:FirmwareVersion><tds:SerialNumber>{escape(self.serial)}</tds:SerialNumber>"
            "<tds:HardwareId>sim-1</tds:HardwareId></tds:GetDeviceInformationResponse>"
        )

    def _services(self) -> list[tuple[str, str]]:
        base = f"http://{self.host}:{self.port}/onvif"
        services = [(NS["tds"], f"{base}/device_service"), (NS["trt"], f"{base}/media_service")]
        if self.events:
            services.append((NS["tev"], f"{base}/event_service"))
        if self.edge_storage:  # Profile G
            services += [(NS["trc"], f"{base}/recording_service"), (NS["tse"], f"{base}/search_service"),
                         (NS["trp"], f"{base}/replay_service")]
        return services

    async def _op_GetServices(self, op: etree._Element, request: web.Request) -> str:
        services = "".join(
            f"<tds:Service><tds:Namespace>{ns}</tds:Namespace><tds:XAddr>{xaddr}</tds:XAddr>"
            "<tds:Version><tt:Major>2</tt:Major><tt:Minor>60</tt:Minor></tds:Version></tds:Service>"
            for ns, xaddr in self._services())
        return f"<tds:GetServicesResponse>{services}</tds:GetServicesResponse>"

    async def _op_GetCapabilities(self, op: etree._Element, request: web.Request) -> str:
        xaddrs = dict(self._services())
        events = (
            f"<tt:Events><tt:XAddr>{xaddrs[NS['tev']]}</tt:XAddr><tt:WSSubscriptionPolicySupport>false"
            "</tt:WSSubscriptionPolicySupport><tt:WSPullPointSupport>true</tt:WSPullPointSupport>"
            "<tt:WSPausableSubscriptionManagerInterfaceSupport>false</tt:WSPausableSubscriptionManagerInterfaceSupport>"
            "</tt:Events>") if self.events else ""
        return (
            "<tds:GetCapabilitiesResponse><tds:Capabilities>"
            f"<tt:Device><tt:XAddr>{xaddrs[NS['tds']]}</tt:XAddr></tt:Device>{events}"
            f"<tt:Media><tt:XAddr>{xaddrs[NS['trt']]}</tt:XAddr><tt:StreamingCapabilities>"
            "<tt:RTPMulticast>false</tt:RTPMulticast><tt:RTP_TCP>true</tt:RTP_TCP><tt:RTP_RTSP_TCP>true"
            "</tt:RTP_RTSP_TCP></tt:StreamingCapabilities></tt:Media>"
            "</tds:Capabilities></tds:GetCapabilitiesResponse>"
        )

    # -- media -----------------------------------------------------------------------------

    def _profiles(self) -> list[tuple[str, str, str]]:
        profiles = [("main", "mainStream", self.rtsp_url)]
        if self.substream_url:
            profiles.append(("sub", "subStream", self.substream_url))
        return profiles

    async def _op_GetProfiles(self, op: etree._Element, request: web.Request) -> str:
        profiles = "".join(
            f'<trt:Profiles token="{token}" fixed="true"><tt:Name>{name}</tt:Name></trt:Profiles>'
            for token, name, _ in self._profiles())
        return f"<trt:GetProfilesResponse>{profiles}</trt:GetProfilesResponse>"

    # -- Profile G: search and replay --------------------------------------------------------

    def _edge(self, operation: str) -> SdCard:
        if self.card is None:
            raise SoapFault("s:Receiver", "ter:ActionNotSupported", f"{operation} is not supported")
        if self.search_fault is not None:
            raise SoapFault("s:Receiver", "ter:Action", self.search_fault, status=500)
        return self.card

    async def _op_GetRecordingSummary(self, op: etree._Element, request: web.Request) -> str:
        span = self._edge("GetRecordingSummary").span()
        start, end = span if span else (self.now().timestamp(),) * 2
        return (f"<tse:GetRecordingSummaryResponse><tse:Summary><tt:DataFrom>{_iso_ms(start)}</tt:DataFrom>"
                f"<tt:DataUntil>{_iso_ms(end)}</tt:DataUntil><tt:NumberRecordings>{1 if span else 0}"
                "</tt:NumberRecordings></tse:Summary></tse:GetRecordingSummaryResponse>")

    async def _op_FindRecordings(self, op: etree._Element, request: web.Request) -> str:
        self._edge("FindRecordings")
        keep = _duration(op.findtext("tse:KeepAliveTime", "", NS), self.now(), 10.0)
        token = uuid.uuid4().hex[:12]
        self._searches = {t: until for t, until in self._searches.items() if until > time.time()}
        if len(self._searches) >= 8:  # a real camera runs a handful of searches at a time
            raise SoapFault("s:Receiver", "ter:ResourceProblem", "too many searches")
        self._searches[token] = time.time() + max(keep, 1.0)
        return f"<tse:FindRecordingsResponse><tse:SearchToken>{token}</tse:SearchToken></tse:FindRecordingsResponse>"

    def _search(self, op: etree._Element) -> str:
        token = op.findtext("tse:SearchToken", "", NS)
        if self._searches.get(token, 0.0) < time.time():
            self._searches.pop(token, None)
            raise SoapFault("s:Sender", "ter:InvalidArgVal", f"no search {token!r}")
        return token

    async def _op_GetRecordingSearchResults(self, op: etree._Element, request: web.Request) -> str:
        card = self._edge("GetRecordingSearchResults")
        self._search(op)
        span = card.span()
        info = ""
        if span is not None:
            info = (
                f"<tt:RecordingInformation><tt:RecordingToken>{self.recording_token}</tt:RecordingToken>"
                f"<tt:Source><tt:SourceId>{escape(self.device_url)}</tt:SourceId><tt:Name>{escape(self.model)}"
                "</tt:Name><tt:Location>station</tt:Location><tt:Description>SD card</tt:Description>"
                f"<tt:Address>{escape(self.device_url)}</tt:Address></tt:Source>"
                f"<tt:EarliestRecording>{_iso_ms(span[0])}</tt:EarliestRecording>"
                f"<tt:LatestRecording>{_iso_ms(span[1])}</tt:LatestRecording><tt:Content>continuous</tt:Content>"
                "<tt:Track><tt:TrackToken>VIDEO001</tt:TrackToken><tt:TrackType>Video</tt:TrackType>"
                f"<tt:Description>main</tt:Description><tt:DataFrom>{_iso_ms(span[0])}</tt:DataFrom>"
                f"<tt:DataTo>{_iso_ms(span[1])}</tt:DataTo></tt:Track>"
                "<tt:RecordingStatus>Recording</tt:RecordingStatus></tt:RecordingInformation>")
        return ("<tse:GetRecordingSearchResultsResponse><tse:ResultList><tt:SearchState>Completed</tt:SearchState>"
                f"{info}</tse:ResultList></tse:GetRecordingSearchResultsResponse>")

    async def _op_EndSearch(self, op: etree._Element, request: web.Request) -> str:
        self._edge("EndSearch")
        self._searches.pop(self._search(op), None)
        return f"<tse:EndSearchResponse><tse:Endpoint>{_iso_ms(self.now().timestamp())}</tse:Endpoint>" \
               "</tse:EndSearchResponse>"

    async def _op_GetReplayUri(self, op: etree._Element, request: web.Request) -> str:
        self._edge("GetReplayUri")
        token = op.findtext("trp:RecordingToken", "", NS)
        if token != self.recording_token or self.replay is None:
            raise SoapFault("s:Sender", "ter:InvalidArgVal", f"no recording {token!r}")
        return f"<trp:GetReplayUriResponse><trp:Uri>{escape(self.replay.base_url + token)}</trp:Uri>" \
               "</trp:GetReplayUriResponse>"

    async def _op_GetStreamUri(self, op: etree._Element, request: web.Request) -> str:
        token = op.findtext("trt:ProfileToken", "", NS)
        uri = next((u for t, _, u in self._profiles() if t == token), None)
        if uri == self.rtsp_url:
            uri = self.live_url
        if uri is None:
            raise SoapFault("s:Sender", "ter:InvalidArgVal", f"no profile {token!r}")
        return (
            f"<trt:GetStreamUriResponse><trt:MediaUri><tt:Uri>{escape(uri)}</tt:Uri>"
            "<tt:InvalidAfterConnect>false</tt:InvalidAfterConnect><tt:InvalidAfterReboot>false"
            "</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri></trt:GetStreamUriResponse>"
        )

    # -- events ----------------------------------------------------------------------------

    async def _op_CreatePullPointSubscription(self, op: etree._Element, request: web.Request) -> str:
        if not self.events:
            raise SoapFault("s:Receiver", "ter:ActionNotSupported", "CreatePullPointSubscription is not supported")
        seconds = _duration(op.findtext("tev:InitialTerminationTime", "", NS), self.now(), 60.0)
        sub = _Subscription(uuid.uuid4().hex, time.time() + seconds)
        self._subs[sub.id] = sub
        address = f"http://{self.host}:{self.port}/onvif/subscription/{sub.id}"
        return (
            "<tev:CreatePullPointSubscriptionResponse><tev:SubscriptionReference>"
            f"<wsa:Address>{address}</wsa:Address></tev:SubscriptionReference>"
            f"{self._times(sub)}</tev:CreatePullPointSubscriptionResponse>"
        )

    def _times(self, sub: _Subscription) -> str:
        now = self.now()
        end = now + dt.timedelta(seconds=sub.expires - time.time())
        return (f"<wsnt:CurrentTime>{_iso(now)}</wsnt:CurrentTime>"
                f"<wsnt:TerminationTime>{_iso(end)}</wsnt:TerminationTime>")

    def _subscription(self, request: web.Request) -> _Subscription:
        sub = self._subs.get(request.match_info.get("sub", ""))
        if sub is None or sub.expires < time.time():
            self._subs.pop(request.match_info.get("sub", ""), None)
            raise SoapFault("s:Sender", "ter:InvalidArgVal", "unknown or expired subscription")
        return sub

    async def _op_PullMessages(self, op: etree._Element, request: web.Request) -> str:
        sub = self._subscription(request)
        timeout = min(_duration(op.findtext("tev:Timeout", "", NS), self.now(), 10.0), 60.0)
        limit = int(op.findtext("tev:MessageLimit", "100", NS) or 100)
        if not sub.queue:
            sub.wake.clear()
            self._polls.add(sub.wake)
            try:
                await asyncio.wait_for(sub.wake.wait(), timeout)
            except TimeoutError:
                pass
            finally:
                self._polls.discard(sub.wake)
        if sub.id not in self._subs:  # rebooted while waiting
            raise SoapFault("s:Sender", "ter:InvalidArgVal", "unknown or expired subscription")
        messages, sub.queue = sub.queue[:limit], sub.queue[limit:]
        return f"<tev:PullMessagesResponse>{self._times(sub).replace('wsnt:', 'tev:')}{''.join(messages)}" \
               "</tev:PullMessagesResponse>"

    async def _op_Renew(self, op: etree._Element, request: web.Request) -> str:
        sub = self._subscription(request)
        sub.expires = time.time() + _duration(op.findtext("wsnt:TerminationTime", "", NS), self.now(), 60.0)
        times = self._times(sub)  # RenewResponse: TerminationTime first, then CurrentTime
        termination = times[times.index("<wsnt:TerminationTime>"):]
        return f"<wsnt:RenewResponse>{termination}{times[:times.index('<wsnt:TerminationTime>')]}</wsnt:RenewResponse>"

    async def _op_Unsubscribe(self, op: etree._Element, request: web.Request) -> str:
        sub = self._subscription(request)
        self._subs.pop(sub.id, None)
        sub.wake.set()
        return "<wsnt:UnsubscribeResponse/>"

    async def _op_SetSynchronizationPoint(self, op: etree._Element, request: web.Request) -> str:
        self._subscription(request)
        return "<tev:SetSynchronizationPointResponse/>"

    def _queue_event(self, topic: str, state: bool, source: tuple[str, str]) -> None:
        item = _STATE_ITEM.get(topic, "State")
        message = (
            f'<wsnt:NotificationMessage><wsnt:Topic Dialect="{_TOPIC_DIALECT}">{topic}</wsnt:Topic>'
            f'<wsnt:Message><tt:Message UtcTime="{_iso(self.now())}" PropertyOperation="Changed">'
            f'<tt:Source><tt:SimpleItem Name={quoteattr(source[0])} Value={quoteattr(source[1])}/></tt:Source>'
            f'<tt:Data><tt:SimpleItem Name="{item}" Value="{str(state).lower()}"/></tt:Data>'
            "</tt:Message></wsnt:Message></wsnt:NotificationMessage>"
        )
        for sub in self._subs.values():
            sub.queue.append(message)
            sub.wake.set()


def _envelope(body: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?><s:Envelope {_XMLNS}><s:Body>{body}</s:Body></s:Envelope>'.encode()


def _fault(fault: SoapFault) -> web.Response:
    body = (
        f"<s:Fault><s:Code><s:Value>{fault.code}</s:Value><s:Subcode><s:Value>{fault.subcode}</s:Value>"
        f'</s:Subcode></s:Code><s:Reason><s:Text xml:lang="en">{escape(fault.reason)}</s:Text></s:Reason></s:Fault>'
    )
    return web.Response(status=fault.status, body=_envelope(body), content_type="application/soap+xml",
                        charset="utf-8")


def _datetime(when: dt.datetime) -> str:
    return (f"<tt:Time><tt:Hour>{when.hour}</tt:Hour><tt:Minute>{when.minute}</tt:Minute>"
            f"<tt:Second>{when.second}</tt:Second></tt:Time><tt:Date><tt:Year>{when.year}</tt:Year>"
            f"<tt:Month>{when.month}</tt:Month><tt:Day>{when.day}</tt:Day></tt:Date>")


def _iso(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_ms(at: float) -> str:
    when = dt.datetime.fromtimestamp(at, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _duration(text: str, camera_now: dt.datetime, default: float) -> float:
    """An xs:duration (PT60S, PT1M) or an absolute time (on the camera's clock) as seconds from now."""
    text = (text or "").strip()
    if not text:
        return default
    if text.startswith("PT"):
        seconds, number = 0.0, ""
        for ch in text[2:]:
            if ch.isdigit() or ch == ".":
                number += ch
            else:
                seconds += float(number or 0) * {"H": 3600, "M": 60, "S": 1}.get(ch, 0)
                number = ""
        return seconds
    try:
        return max((dt.datetime.fromisoformat(text.replace("Z", "+00:00")) - camera_now).total_seconds(), 0.0)
    except ValueError:
        return default
