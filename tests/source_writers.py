"""Writers of YOLO / VOC / COCO datasets for the source-reader tests (tests/test_sources_*.py), independent
of the readers they test (ElementTree and json from the standard library, Pillow for images)."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd


def write_image(path: Path, width: int, height: int, fmt: str | None = None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (width, height), 128).save(path, format=fmt)
    return path


def write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def yolo_export_of_voc(voc_root: Path, out: Path, names: list[str]) -> Path:
    """The VOC XML boxes of ``voc_root`` as an ultralytics dataset in ``out`` (images symlinked into
    images/train/, labels normalised by each XML's own <size>, 6 decimals as exporters write them)."""
    (out / "images" / "train").mkdir(parents=True)
    (out / "labels" / "train").mkdir(parents=True)
    for xml in sorted((voc_root / "annotations" / "xml").glob("*.xml")):
        root = ET.parse(xml).getroot()
        w, h = float(root.findtext("size/width")), float(root.findtext("size/height"))
        lines = []
        for o in root.findall("object"):
            x0, y0, x1, y1 = (float(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            lines.append(f"{names.index(o.findtext('name'))} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} "
                         f"{(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}")
        (out / "images" / "train" / f"{xml.stem}.jpg").symlink_to(voc_root / "images" / f"{xml.stem}.jpg")
        (out / "labels" / "train" / f"{xml.stem}.txt").write_text("".join(line + "\n" for line in lines))
    write_yaml(out / "data.yaml", "path: .\ntrain: images/train\nnames:\n"
               + "".join(f"  {i}: {n}\n" for i, n in enumerate(names)))
    return out


def write_coco(path: Path, images: pd.DataFrame, annotations: pd.DataFrame, names: list[str],
               first_category_id: int = 1) -> Path:
    """A COCO instances JSON of the two tables (boxes in the files' pixels; file_name = the source's name)."""
    cat = {n: first_category_id + i for i, n in enumerate(names)}
    ids = {i: k + 1 for k, i in enumerate(images["image_id"])}
    doc = {
        "images": [{"id": ids[r.image_id], "file_name": Path(r.source).name, "width": int(r.width),
                    "height": int(r.height)} for r in images.itertuples()],
        "annotations": [{"id": k + 1, "image_id": ids[r.image_id], "category_id": cat[r.class_name],
                         "bbox": [r.x_min, r.y_min, r.x_max - r.x_min, r.y_max - r.y_min], "iscrowd": 0,
                         "area": (r.x_max - r.x_min) * (r.y_max - r.y_min)}
                        for k, r in enumerate(annotations.dropna(subset=["x_min"]).itertuples())],
        "categories": [{"id": c, "name": n} for n, c in cat.items()],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    return path


def write_voc_xml(path: Path, objects: list[tuple], size: tuple[int, int] | None = None, filename: str = "") -> Path:
    """A VOC XML; ``objects``: (name, xmin, ymin, xmax, ymax). One element per line, so line numbers are known:
    the k-th <object> starts on line ``voc_object_line(k, size)``."""
    lines = ["<annotation>", f"\t<filename>{filename}</filename>"]
    if size is not None:
        lines += ["\t<size>", f"\t\t<width>{size[0]}</width>", f"\t\t<height>{size[1]}</height>", "\t</size>"]
    for name, *box in objects:
        lines += ["\t<object>", f"\t\t<name>{name}</name>", "\t\t<difficult>0</difficult>", "\t\t<bndbox>"]
        lines += [f"\t\t\t<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box)]
        lines += ["\t\t</bndbox>", "\t</object>"]
    lines.append("</annotation>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def voc_object_line(k: int, size: tuple | None) -> int:
    """Line of the k-th (0-based) <object> in a file written by :func:`write_voc_xml`."""
    return 3 + (4 if size is not None else 0) + 10 * k
