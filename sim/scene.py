"""Synthetic camera scenes rendered as raw I420 frames with numpy.

Used by camsim.py (Debian's python3 + python3-numpy). Everything expensive is
precomputed per resolution; a frame costs a couple of memcpys plus a few small
slice assignments, so 640x360@15 stays in the low single-digit % of one core.
"""

from __future__ import annotations

import math
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

# 7-segment layout: segment -> (x0, y0, x1, y1) in a 4x7 unit grid (thickness 1 unit)
_SEGS = {
    "a": (0, 0, 4, 1), "b": (3, 0, 4, 4), "c": (3, 3, 4, 7), "d": (0, 6, 4, 7),
    "e": (0, 3, 1, 7), "f": (0, 0, 1, 4), "g": (0, 3, 4, 4),
}
_DIGITS = {
    "0": "abcdef", "1": "bc", "2": "abged", "3": "abgcd", "4": "fgbc", "5": "afgcd",
    "6": "afgedc", "7": "abc", "8": "abcdefg", "9": "abcfgd", ":": "", "-": "g", " ": "",
}


class Scene:
    """One view ('variant' 0 = normal street view, 1 = the camera pointed elsewhere)."""

    def __init__(self, width: int, height: int, variant: int = 0):
        if width % 2 or height % 2:
            raise ValueError("width and height must be even")
        self.w, self.h, self.variant = width, height, variant
        self.frame_size = width * height * 3 // 2
        self._buf = np.empty(self.frame_size, np.uint8)
        w, h = width, height
        self.Y = self._buf[: w * h].reshape(h, w)
        self.U = self._buf[w * h: w * h * 5 // 4].reshape(h // 2, w // 2)
        self.V = self._buf[w * h * 5 // 4:].reshape(h // 2, w // 2)
        rng = np.random.default_rng(1234 + variant)
        if variant == 0:
            self._bg16, self._bgU, self._bgV = self._street(rng)
        else:
            self._bg16, self._bgU, self._bgV = self._hall(rng)
        self._bg_off = None
        self._bgY = None
        self._objects = self._make_objects(rng)
        # clock overlay geometry
        self._dh = max(14, h // 16)            # digit height (7 units)
        self._u = max(2, self._dh // 7)        # unit
        self._dh = self._u * 7
        self._blur = None

    # ------------------------------------------------------------------ backgrounds
    def _street(self, rng):
        w, h = self.w, self.h
        yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
        Y = np.empty((h, w), np.float32)
        horizon = int(h * 0.55)
        # sky gradient
        Y[:horizon] = (175 - 40 * yy[:horizon])
        # buildings with windows (sharp edges)
        x = 0
        while x < w:
            bw = int(rng.integers(w // 12, w // 5))
            top = int(rng.integers(int(h * 0.12), int(h * 0.40)))
            lvl = float(rng.integers(70, 150))
            Y[top:horizon, x:x + bw] = lvl
            wx, wy = max(3, bw // 10), max(3, h // 40)
            for yy0 in range(top + wy, horizon - 2 * wy, 2 * wy + wy // 2):
                for xx0 in range(x + wx, x + bw - wx, 2 * wx):
                    Y[yy0:yy0 + wy, xx0:xx0 + wx] = lvl + float(rng.choice([-55, -40, 60]))
            x += bw + int(rng.integers(0, w // 30 + 1))
        # ground: paving with tile joints
        Y[horizon:] = 105 + 25 * (yy[horizon:] - 0.55)
        tile = max(8, w // 24)
        Y[horizon::tile // 2 + 2, :] -= 35
        for i, row in enumerate(range(horizon, h, tile // 2 + 2)):
            off = (tile // 2) * (i % 2)
            Y[row:row + tile // 2 + 2, off::tile] -= 35
        # road marking
        ry = int(h * 0.78)
        Y[ry:ry + max(2, h // 90), ::max(8, w // 16)] = 210
        for k in range(0, w, max(16, w // 8)):
            Y[ry:ry + max(2, h // 90), k:k + max(8, w // 16)] = 215
        # lamp posts
        for px in (w // 7, w // 2 + w // 9, w - w // 6):
            Y[int(h * 0.25):horizon + h // 10, px:px + max(2, w // 160)] = 45
            Y[int(h * 0.25):int(h * 0.25) + max(3, h // 70), px - w // 60:px + w // 60] = 230
        # static texture
        Y += rng.normal(0, 6, (h, w)).astype(np.float32)
        U = np.full((h // 2, w // 2), 128, np.float32)
        V = np.full((h // 2, w // 2), 128, np.float32)
        U[: horizon // 2] = 142
        V[: horizon // 2] = 118
        U[horizon // 2:] = 124
        V[horizon // 2:] = 133
        U += rng.normal(0, 2, U.shape).astype(np.float32)
        return self._fin(Y), self._fin8(U), self._fin8(V)

    def _hall(self, rng):
        """A clearly different view: indoor hall/car park, checker floor, pillars, posters."""
        w, h = self.w, self.h
        Y = np.empty((h, w), np.float32)
        floor = int(h * 0.45)
        # wall with diagonal stripes
        ys, xs = np.mgrid[0:floor, 0:w]
        period = max(12, w // 20)
        Y[:floor] = np.where(((xs + ys) // period) % 2 == 0, 150, 110)
        # posters
        for _ in range(5):
            pw, ph = int(rng.integers(w // 14, w // 7)), int(rng.integers(h // 10, h // 5))
            px, py = int(rng.integers(0, w - pw)), int(rng.integers(h // 20, floor - ph))
            Y[py:py + ph, px:px + pw] = float(rng.choice([30, 225, 60, 200]))
            Y[py + ph // 3:py + ph // 3 + max(2, ph // 8), px + pw // 8:px + pw - pw // 8] = 128
        # checker floor
        ys, xs = np.mgrid[floor:h, 0:w]
        cell = max(10, w // 14)
        Y[floor:] = np.where(((xs // cell) + ((ys - floor) // (cell // 2))) % 2 == 0, 80, 135)
        # pillars
        for px in range(w // 10, w, w // 4):
            pw = max(6, w // 25)
            Y[:, px:px + pw] = 175
            Y[:, px + pw - max(2, pw // 4):px + pw] = 95
        Y += rng.normal(0, 5, (h, w)).astype(np.float32)
        U = np.full((h // 2, w // 2), 128, np.float32)
        V = np.full((h // 2, w // 2), 128, np.float32)
        U[: floor // 2] = 112
        V[: floor // 2] = 150
        U[floor // 2:] = 136
        V[floor // 2:] = 120
        return self._fin(Y), self._fin8(U), self._fin8(V)

    @staticmethod
    def _fin(a):
        return np.clip(a, 16, 235).astype(np.int16)

    @staticmethod
    def _fin8(a):
        return np.clip(a, 16, 240).astype(np.uint8)

    # ------------------------------------------------------------------ moving objects
    def _make_objects(self, rng):
        h = self.h
        objs = []
        n = 4
        for i in range(n):
            if self.variant == 0:  # people walking left/right on the pavement
                oh = int(h * rng.uniform(0.14, 0.24))
                ow = max(4, oh // 4)
                base = int(h * rng.uniform(0.62, 0.97))
                speed = float(rng.uniform(0.04, 0.10)) * (1 if i % 2 else -1)
            else:  # carts/cars moving diagonally across the floor
                oh = int(h * rng.uniform(0.10, 0.16))
                ow = int(oh * rng.uniform(1.5, 2.5))
                base = int(h * rng.uniform(0.60, 0.95))
                speed = float(rng.uniform(0.05, 0.12)) * (1 if i % 2 else -1)
            objs.append(dict(
                oh=oh, ow=ow, base=min(base, h - 1), speed=speed, phase=float(rng.uniform(0, 1)),
                y=int(rng.choice([35, 60, 190, 215])), u=int(rng.integers(90, 170)),
                v=int(rng.integers(90, 170)),
            ))
        return objs

    @staticmethod
    def _rect(plane, x0, y0, x1, y1, val):
        hh, ww = plane.shape
        x0, x1 = max(0, x0), min(ww, x1)
        y0, y1 = max(0, y0), min(hh, y1)
        if x0 < x1 and y0 < y1:
            plane[y0:y1, x0:x1] = val

    def _draw_objects(self, t):
        w, h = self.w, self.h
        Y, U, V, R = self.Y, self.U, self.V, self._rect
        for o in self._objects:
            oh, ow = o["oh"], o["ow"]
            span = w + 2 * ow
            p = (t * o["speed"] + o["phase"]) % 1.0
            x = int(p * span) - ow
            bottom = o["base"]
            if self.variant == 1:
                bottom = int(o["base"] - (p - 0.5) * h * 0.15)
            top = bottom - oh
            if self.variant == 0:
                head = max(3, ow * 3 // 4)
                leg = oh // 3
                swing = int(math.sin(t * 6.0 + o["phase"] * 10) * ow * 0.4)
                R(Y, x, top + head, x + ow, bottom - leg, o["y"])                    # torso
                R(Y, x + (ow - head) // 2, top, x + (ow + head) // 2, top + head, 180 if o["y"] < 128 else 90)
                lw = max(2, ow // 3)
                R(Y, x + swing, bottom - leg, x + swing + lw, bottom, 40)            # legs
                R(Y, x + ow - lw - swing, bottom - leg, x + ow - swing, bottom, 40)
                R(U, x // 2, (top + head) // 2, (x + ow) // 2, (bottom - leg) // 2, o["u"])
                R(V, x // 2, (top + head) // 2, (x + ow) // 2, (bottom - leg) // 2, o["v"])
            else:
                R(Y, x, top, x + ow, bottom - oh // 4, o["y"])
                R(Y, x + ow // 8, top + oh // 8, x + ow - ow // 8, top + oh // 3, 235 - o["y"] // 2)
                wr = max(3, oh // 4)
                R(Y, x + ow // 8, bottom - wr, x + ow // 8 + wr, bottom, 25)
                R(Y, x + ow - ow // 8 - wr, bottom - wr, x + ow - ow // 8, bottom, 25)
                R(U, x // 2, top // 2, (x + ow) // 2, (bottom - oh // 4) // 2, o["u"])
                R(V, x // 2, top // 2, (x + ow) // 2, (bottom - oh // 4) // 2, o["v"])

    # ------------------------------------------------------------------ clock overlay
    def _draw_text(self, x, y, text):
        u = self._u
        for ch in text:
            if ch == ":":
                self._rect(self.Y, x + u, y + 2 * u, x + 2 * u, y + 3 * u, 235)
                self._rect(self.Y, x + u, y + 4 * u, x + 2 * u, y + 5 * u, 235)
                x += 3 * u
                continue
            for s in _DIGITS.get(ch, ""):
                a, b, c, d = _SEGS[s]
                self._rect(self.Y, x + a * u, y + b * u, x + c * u, y + d * u, 235)
            x += 6 * u

    def _draw_clock(self, frame_no, wall):
        u = self._u
        lines = [f"{frame_no % 100000000:08d}", time.strftime("%H:%M:%S", time.localtime(wall))]
        bw = 6 * u * 8 + 2 * u
        bh = 2 * (7 * u) + 5 * u
        x0 = y0 = max(2, self.h // 60) & ~1
        self.Y[y0:y0 + bh, x0:x0 + bw] = 16
        self.U[y0 // 2:(y0 + bh) // 2, x0 // 2:(x0 + bw) // 2] = 128
        self.V[y0 // 2:(y0 + bh) // 2, x0 // 2:(x0 + bw) // 2] = 128
        self._draw_text(x0 + 2 * u, y0 + 2 * u, lines[0])
        self._draw_text(x0 + 2 * u, y0 + 10 * u, lines[1])

    # ------------------------------------------------------------------ public
    def render(self, t: float, frame_no: int, wall: float | None = None) -> np.ndarray:
        """Render the frame at scene time t (seconds); returns the I420 buffer (reused!)."""
        off = int(round(14 * math.sin(2 * math.pi * t / 90.0)))   # slow brightness drift
        if off != self._bg_off:
            self._bgY = np.clip(self._bg16 + off, 16, 235).astype(np.uint8)
            self._bg_off = off
        np.copyto(self.Y, self._bgY)
        np.copyto(self.U, self._bgU)
        np.copyto(self.V, self._bgV)
        self._draw_objects(t)
        self._draw_clock(frame_no, time.time() if wall is None else wall)
        return self._buf

    def render_blurred(self, t: float, frame_no: int) -> np.ndarray:
        self.render(t, frame_no)
        if self._blur is None:
            self._blur = (_Blur(self.h, self.w), _Blur(self.h // 2, self.w // 2))
        by, bc = self._blur
        out = np.empty_like(self._buf)
        w, h = self.w, self.h
        out[: w * h] = by(self.Y).ravel()
        out[w * h: w * h * 5 // 4] = bc(self.U).ravel()
        out[w * h * 5 // 4:] = bc(self.V).ravel()
        return out


class _Blur:
    """Heavy defocus blur: subsample, gaussian at low res, separable bilinear upsample."""

    def __init__(self, h, w, lowres_w=64, sigma=1.3):
        k = max(2, int(round(w / lowres_w)))
        self.k = k
        hs, ws = len(range(0, h, k)), len(range(0, w, k))
        self.Gv = self._gauss(hs, sigma).astype(np.float32)
        self.GhT = self._gauss(ws, sigma).astype(np.float32).T.copy()
        self.i0, self.i1, self.fv = self._up(h, hs, k)
        self.j0, self.j1, self.fh = self._up(w, ws, k)
        self.fv = self.fv[:, None]

    @staticmethod
    def _gauss(n, sigma):
        i = np.arange(n)
        g = np.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * sigma * sigma))
        return g / g.sum(axis=1, keepdims=True)

    @staticmethod
    def _up(n, ns, k):
        p = np.clip((np.arange(n) + 0.5) / k - 0.5, 0, ns - 1)
        i0 = np.floor(p).astype(np.intp)
        i1 = np.minimum(i0 + 1, ns - 1)
        return i0, i1, (p - i0).astype(np.float32)

    def __call__(self, plane):
        small = self.Gv @ plane[:: self.k, :: self.k].astype(np.float32) @ self.GhT
        a = small[self.i0]
        rows = a + (small[self.i1] - a) * self.fv            # (h, ws)
        b = rows[:, self.j0]
        out = b + (rows[:, self.j1] - b) * self.fh           # (h, w)
        out += 0.5
        return out.astype(np.uint8)


def black_frame(width: int, height: int) -> bytes:
    n = width * height
    return bytes([16]) * n + bytes([128]) * (n // 2)
