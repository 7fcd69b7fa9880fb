"""Synthetic pictures that are certainly not X-rays, to widen the gate's "not_xray" class offline.

The real not-X-ray examples here are a few dozen (scikit-image's and other packages' sample images);
what a gate meets in practice also includes documents, screenshots, charts and plain graphics. These
generators draw such pictures from a seed (numpy Generator), with fonts that ship with matplotlib
(DejaVu), Pillow's drawing and matplotlib's Agg renderer. Nothing here imitates a radiograph.

Kinds (:data:`KINDS`): ``document`` (pages of text, headings, tables, scanned or dark-mode),
``screenshot`` (windows, menus, sidebars, buttons, code editors, web pages), ``chart`` (line, bar,
scatter, histogram, pie, heatmap), ``texture`` (multi-scale noise, wood, cells, stripes, tiles in
random colour maps or grey), ``shapes`` (clip-art geometry on flat or gradient backgrounds),
``scene`` (crude landscape: sky gradient, textured ground, blobs).

Each generator returns ``uint8 (H, W, 3)``; :func:`synthetic_image` picks one by name.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

KINDS = ("document", "screenshot", "chart", "texture", "shapes", "scene")
_SYLLABLES = ("ka", "lo", "mi", "ter", "an", "re", "sto", "ul", "pha", "ne", "di", "co", "ver", "is", "tum",
              "ex", "ra", "pel", "on", "si", "qua", "bri", "ent", "ot", "mar", "gu", "les", "in", "ful", "zo")


@lru_cache(maxsize=None)
def _font_files() -> tuple[str, ...]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return tuple(sorted(str(p) for p in folder.glob("DejaVu*.ttf")))


@lru_cache(maxsize=256)
def _font(path: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


def _random_font(rng, size: int, mono: bool = False):
    files = [f for f in _font_files() if ("Mono" in f) == mono] or list(_font_files())
    return _font(files[int(rng.integers(len(files)))], int(size))


def _word(rng) -> str:
    w = "".join(_SYLLABLES[int(i)] for i in rng.integers(0, len(_SYLLABLES), int(rng.integers(1, 4))))
    return w.capitalize() if rng.random() < 0.15 else w


def _sentence(rng, n_words: int) -> str:
    words = [_word(rng) for _ in range(n_words)]
    if rng.random() < 0.3:
        words[int(rng.integers(n_words))] = str(int(rng.integers(0, 10000)))
    return " ".join(words)


def _colour(rng, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _grey(rng, lo: int, hi: int) -> tuple[int, int, int]:
    g = int(rng.integers(lo, hi))
    return (g, g, g)


def document(rng) -> np.ndarray:
    from PIL import Image, ImageDraw

    w, h = (int(rng.integers(360, 460)), int(rng.integers(480, 600)))
    if rng.random() < 0.25:
        w, h = h, w
    dark = rng.random() < 0.15
    bg = _grey(rng, 10, 40) if dark else (_colour(rng, 225, 256) if rng.random() < 0.3 else _grey(rng, 215, 256))
    ink = _colour(rng, 160, 256) if dark else _colour(rng, 0, 70)
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    mono = dark or rng.random() < 0.15
    margin, y = int(rng.integers(15, 50)), int(rng.integers(15, 50))
    size = int(rng.integers(9, 17))
    if rng.random() < 0.8:  # heading
        d.text((margin, y), _sentence(rng, int(rng.integers(2, 6))), fill=ink, font=_random_font(rng, size * 1.8, mono))
        y += int(size * 3)
    columns = 2 if (w > 420 and rng.random() < 0.3) else 1
    col_w = (w - 2 * margin) // columns
    while y < h - margin - size:
        if rng.random() < 0.08:  # a table
            rows, cols = int(rng.integers(3, 8)), int(rng.integers(2, 6))
            cell_h, cell_w = size + 8, (w - 2 * margin) // cols
            for r in range(rows + 1):
                d.line([(margin, y + r * cell_h), (margin + cols * cell_w, y + r * cell_h)], fill=ink, width=1)
            for c in range(cols + 1):
                d.line([(margin + c * cell_w, y), (margin + c * cell_w, y + rows * cell_h)], fill=ink, width=1)
            font = _random_font(rng, size, mono)
            for r in range(rows):
                for c in range(cols):
                    d.text((margin + c * cell_w + 3, y + r * cell_h + 3), _word(rng)[:8], fill=ink, font=font)
            y += rows * cell_h + size
            continue
        font = _random_font(rng, size, mono)
        n_lines, line_h, top, bottom = int(rng.integers(2, 9)), int(size * rng.uniform(1.2, 1.6)), y, y
        for col in range(columns):  # a paragraph, side by side in each column
            x0, y = margin + col * col_w, top
            for _ in range(n_lines):
                chars = int(col_w / (size * 0.55))
                d.text((x0, y), _sentence(rng, 12)[: max(5, int(chars * rng.uniform(0.6, 1.0)))], fill=ink, font=font)
                y += line_h
                if y > h - margin - size:
                    break
            bottom = max(bottom, y)
        y = bottom + size
    arr = np.asarray(img)
    if rng.random() < 0.35:  # a scanned page: slight rotation on a dark scanner bed, noise
        import cv2

        angle = rng.uniform(-4, 4)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, rng.uniform(0.85, 1.0))
        arr = cv2.warpAffine(arr, m, (w, h), borderValue=_grey(rng, 0, 90))
        arr = np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255).astype(np.uint8)
    return arr


def _ui_text(d, rng, xy, fill, size, mono=False, words=3):
    d.text(xy, _sentence(rng, words), fill=fill, font=_random_font(rng, size, mono))


def screenshot(rng) -> np.ndarray:
    from PIL import Image, ImageDraw

    w, h = int(rng.integers(420, 640)), int(rng.integers(280, 460))
    dark = rng.random() < 0.4
    base = _grey(rng, 20, 60) if dark else _grey(rng, 225, 256)
    fg = _grey(rng, 190, 240) if dark else _grey(rng, 10, 70)
    accent = _colour(rng, 40, 230)
    img = Image.new("RGB", (w, h), base)
    d = ImageDraw.Draw(img)
    bar = int(rng.integers(18, 32))
    d.rectangle([0, 0, w, bar], fill=accent if rng.random() < 0.5 else _grey(rng, 60, 200))
    _ui_text(d, rng, (8, 4), (255, 255, 255), bar * 0.55)
    for i in range(3):  # window buttons
        d.ellipse([w - 20 - 18 * i, 5, w - 8 - 18 * i, 17], fill=_colour(rng, 80, 255))
    y0 = bar
    if rng.random() < 0.7:  # menu bar
        d.rectangle([0, y0, w, y0 + 18], fill=_grey(rng, 40, 80) if dark else _grey(rng, 200, 235))
        x = 6
        for _ in range(int(rng.integers(3, 8))):
            word = _word(rng)
            d.text((x, y0 + 3), word, fill=fg, font=_random_font(rng, 11))
            x += 10 + 7 * len(word)
        y0 += 18
    x0 = 0
    if rng.random() < 0.6:  # sidebar with a list
        x0 = int(rng.integers(80, 160))
        d.rectangle([0, y0, x0, h], fill=_grey(rng, 30, 70) if dark else _grey(rng, 205, 240))
        for yy in range(y0 + 8, h - 16, int(rng.integers(18, 28))):
            if rng.random() < 0.15:
                d.rectangle([2, yy - 3, x0 - 2, yy + 14], fill=accent)
            _ui_text(d, rng, (10, yy), fg, 11, words=2)
    mode = rng.choice(["code", "form", "web"])
    y = y0 + 10
    if mode == "code":
        font = _random_font(rng, int(rng.integers(10, 14)), mono=True)
        palette = [_colour(rng, 90, 256) for _ in range(5)] if dark else [_colour(rng, 0, 160) for _ in range(5)]
        while y < h - 14:
            indent = 4 * int(rng.integers(0, 4))
            d.text((x0 + 8 + indent * 7, y), _sentence(rng, int(rng.integers(1, 6))),
                   fill=palette[int(rng.integers(len(palette)))], font=font)
            y += 15
    elif mode == "form":
        while y < h - 30:
            _ui_text(d, rng, (x0 + 12, y), fg, 12, words=2)
            d.rectangle([x0 + 130, y - 2, min(w - 12, x0 + 130 + int(rng.integers(80, 260))), y + 16],
                        outline=fg, fill=base)
            y += int(rng.integers(26, 40))
        bx = x0 + 12
        for _ in range(int(rng.integers(1, 4))):
            d.rounded_rectangle([bx, h - 30, bx + 80, h - 8], radius=6, fill=accent)
            _ui_text(d, rng, (bx + 10, h - 26), (255, 255, 255), 11, words=1)
            bx += 95
    else:
        d.rectangle([x0, y0, w, y0 + 50], fill=accent)
        _ui_text(d, rng, (x0 + 15, y0 + 12), (255, 255, 255), 20, words=3)
        y = y0 + 64
        while y < h - 20:
            if rng.random() < 0.25:  # a picture block
                bw, bh = int(rng.integers(60, 160)), int(rng.integers(40, 90))
                block = _noise_field(rng, (bh, bw))
                tile = Image.fromarray(_colourise(rng, block))
                img.paste(tile, (x0 + 12, y))
                y += bh + 8
                continue
            _ui_text(d, rng, (x0 + 12, y), fg, 12, words=int(rng.integers(4, 12)))
            y += 18
    return np.asarray(img)


def chart(rng) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(rng.uniform(3.2, 5.0), rng.uniform(2.4, 4.0)), dpi=80)
    ax = fig.add_subplot(111)
    kind = rng.choice(["line", "bar", "scatter", "hist", "pie", "heatmap"])
    x = np.arange(int(rng.integers(8, 60)))
    if kind == "line":
        for _ in range(int(rng.integers(1, 4))):
            ax.plot(x, np.cumsum(rng.normal(0, 1, len(x))), lw=rng.uniform(1, 3))
    elif kind == "bar":
        n = int(rng.integers(3, 12))
        ax.bar(np.arange(n), rng.uniform(1, 10, n), color=[np.array(_colour(rng)) / 255 for _ in range(n)])
    elif kind == "scatter":
        ax.scatter(rng.normal(0, 1, 200), rng.normal(0, 1, 200), s=rng.uniform(4, 30), alpha=0.7)
    elif kind == "hist":
        ax.hist(rng.normal(0, 1, 500), bins=int(rng.integers(8, 40)))
    elif kind == "pie":
        ax.pie(rng.uniform(1, 5, int(rng.integers(3, 7))))
    else:
        ax.imshow(rng.random((int(rng.integers(5, 20)), int(rng.integers(5, 20)))),
                  cmap=rng.choice(["viridis", "magma", "coolwarm", "gray", "Blues"]))
    if rng.random() < 0.7:
        ax.set_title(_sentence(rng, 3))
        ax.set_xlabel(_word(rng))
        ax.grid(rng.random() < 0.5)
    if rng.random() < 0.25:
        fig.set_facecolor(np.array(_grey(rng, 20, 60)) / 255)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def _noise_field(rng, shape: tuple[int, int], octaves: int = 5) -> np.ndarray:
    """Multi-scale value noise in [0, 1], shape (h, w)."""
    import cv2

    h, w = shape
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    falloff = rng.uniform(0.4, 0.75)
    for o in range(octaves):
        cells = 2 ** (o + 1)
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= falloff
    out /= total
    return (out - out.min()) / (out.max() - out.min() + 1e-6)


def _colourise(rng, field: np.ndarray) -> np.ndarray:
    import matplotlib

    if rng.random() < 0.35:
        g = (field * 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    cmap = matplotlib.colormaps[rng.choice(["viridis", "terrain", "copper", "autumn", "summer", "ocean",
                                            "YlGn", "pink", "cividis", "twilight", "gist_earth", "BrBG"])]
    return (cmap(field)[:, :, :3] * 255).astype(np.uint8)


def texture(rng) -> np.ndarray:
    import cv2

    h, w = int(rng.integers(200, 320)), int(rng.integers(200, 320))
    kind = rng.choice(["clouds", "wood", "cells", "stripes", "tiles", "fabric"])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "clouds":
        f = _noise_field(rng, (h, w), octaves=int(rng.integers(3, 7)))
    elif kind == "wood":
        n = _noise_field(rng, (h, w))
        f = (np.sin((xx * rng.uniform(0.05, 0.3)) + 8 * n) + 1) / 2
    elif kind == "cells":
        pts = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(20, 120))):
            pts[int(rng.integers(h)), int(rng.integers(w))] = 255
        dist = cv2.distanceTransform(255 - pts, cv2.DIST_L2, 5)
        f = dist / (dist.max() + 1e-6)
    elif kind == "stripes":
        angle = rng.uniform(0, np.pi)
        f = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * rng.uniform(0.05, 0.5)) + 1) / 2
    elif kind == "tiles":
        s = int(rng.integers(8, 48))
        f = (((xx // s) + (yy // s)) % 2).astype(np.float32) * rng.uniform(0.4, 1.0)
        f += 0.2 * _noise_field(rng, (h, w))
    else:
        a, b = rng.uniform(0.1, 0.6, 2)
        f = (np.sin(xx * a) * np.sin(yy * b) + 1) / 2 * 0.7 + 0.3 * _noise_field(rng, (h, w))
    f = (f - f.min()) / (f.max() - f.min() + 1e-6)
    return _colourise(rng, f.astype(np.float32))


def shapes(rng) -> np.ndarray:
    import cv2

    h, w = int(rng.integers(200, 320)), int(rng.integers(200, 320))
    if rng.random() < 0.5:
        img = np.full((h, w, 3), _colour(rng), np.uint8)
    else:
        t = np.linspace(0, 1, w if rng.random() < 0.5 else h, dtype=np.float32)
        c0, c1 = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
        ramp = (c0[None] * (1 - t[:, None]) + c1[None] * t[:, None]).astype(np.uint8)
        img = np.ascontiguousarray(np.broadcast_to(ramp[None], (h, w, 3)) if len(t) == w
                                   else np.broadcast_to(ramp[:, None], (h, w, 3)))
    for _ in range(int(rng.integers(2, 14))):
        colour = _colour(rng)
        thick = -1 if rng.random() < 0.6 else int(rng.integers(1, 6))
        kind = rng.integers(4)
        cx, cy = int(rng.integers(w)), int(rng.integers(h))
        if kind == 0:
            cv2.circle(img, (cx, cy), int(rng.integers(5, min(h, w) // 3)), colour, thick, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(img, (cx, cy), (int(rng.integers(w)), int(rng.integers(h))), colour, thick)
        elif kind == 2:
            pts = rng.integers(0, [w, h], (int(rng.integers(3, 7)), 2)).astype(np.int32)
            if thick < 0:
                cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
            else:
                cv2.polylines(img, [pts], True, colour, thick, cv2.LINE_AA)
        else:
            cv2.line(img, (cx, cy), (int(rng.integers(w)), int(rng.integers(h))), colour,
                     max(1, thick), cv2.LINE_AA)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.5))
    return img


def scene(rng) -> np.ndarray:
    import cv2

    h, w = int(rng.integers(200, 300)), int(rng.integers(260, 400))
    horizon = int(h * rng.uniform(0.3, 0.7))
    sky0, sky1 = np.array(_colour(rng, 120, 256), np.float32), np.array(_colour(rng, 60, 230), np.float32)
    t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
    sky = sky0 * (1 - t) + sky1 * t
    img = np.zeros((h, w, 3), np.float32)
    img[:horizon] = sky
    ground = _noise_field(rng, (h - horizon, w))[:, :, None]
    g0, g1 = np.array(_colour(rng, 0, 160), np.float32), np.array(_colour(rng, 40, 220), np.float32)
    img[horizon:] = g0 * (1 - ground) + g1 * ground
    out = img.astype(np.uint8)
    if rng.random() < 0.5:
        cv2.circle(out, (int(rng.integers(w)), int(rng.integers(max(1, horizon)))), int(rng.integers(8, 30)),
                   _colour(rng, 200, 256), -1, cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 8))):  # trees, rocks, buildings as blobs
        cx, cy = int(rng.integers(w)), int(horizon + rng.integers(-20, max(-19, h - horizon)))
        cv2.ellipse(out, (cx, cy), (int(rng.integers(6, 40)), int(rng.integers(6, 50))), 0, 0, 360,
                    _colour(rng, 0, 150), -1, cv2.LINE_AA)
    out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.5))
    return np.clip(out + rng.normal(0, 4, out.shape), 0, 255).astype(np.uint8)


_GENERATORS = {"document": document, "screenshot": screenshot, "chart": chart, "texture": texture,
               "shapes": shapes, "scene": scene}


def synthetic_image(kind: str, seed: int) -> np.ndarray:
    """One picture of ``kind`` (see :data:`KINDS`) drawn from ``seed``: same seed, same picture."""
    if kind not in _GENERATORS:
        raise ValueError(f"unknown synthetic kind {kind!r}; kinds are {list(KINDS)}")
    return _GENERATORS[kind](np.random.default_rng(seed))
