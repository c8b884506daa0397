"""Prometheus series of the request limits: live sessions, event streams, sign-ins, streams ended by identity.

The numbers live in the objects that enforce the limits (:class:`~web.slots.Slots`,
:class:`~web.login_throttle.LoginThrottle`, :class:`~web.identity_watch.IdentityWatch`);
this collector only reads them at scrape time.  Registered in the daemon's
registry while the station's app runs.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from web.identity_watch import IdentityWatch
from web.login_throttle import LoginThrottle
from web.slots import REFUSALS, Slots


class LimitsCollector(Collector):
    def __init__(self, live: Slots, streams: Slots, logins: LoginThrottle, watch: IdentityWatch) -> None:
        self.slots = {"live_sessions": live, "event_streams": streams}
        self.logins = logins
        self.watch = watch

    def collect(self) -> Iterator[Metric]:
        for name, slots in self.slots.items():
            now = GaugeMetricFamily(f"nvr_{name}", f"Open {slots.noun}")
            now.add_metric([], slots.in_use)
            limit = GaugeMetricFamily(f"nvr_{name}_limit", f"Most {slots.noun} at once")
            limit.add_metric([], slots.total)
            refused = CounterMetricFamily(f"nvr_{name}_refused", f"{slots.noun.capitalize()} refused, by limit",
                                          labels=["reason"])
            for reason in REFUSALS:
                refused.add_metric([reason], slots.refused.get(reason, 0))
            yield from (now, limit, refused)
        pending = GaugeMetricFamily("nvr_logins_pending", "Sign-ins whose password is being checked or waits")
        pending.add_metric([], self.logins.pending)
        refused = CounterMetricFamily("nvr_logins_refused", "Sign-ins refused before their password was checked",
                                      labels=["reason"])
        for reason in ("locked", "busy"):
            refused.add_metric([reason], self.logins.refused.get(reason, 0))
        ended = CounterMetricFamily("nvr_streams_ended_by_identity",
                                    "Event feeds and live sessions closed because their identity ended")
        ended.add_metric([], self.watch.closed_total)
        yield from (pending, refused, ended)
