import os
import socket
import urllib.request

import pytest

from tests.conftest import NetworkAttempt


def test_offline_environment_is_set_on_import():
    import pipeline  # noqa: F401

    for key in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "NO_ALBUMENTATIONS_UPDATE", "HF_HUB_OFFLINE", "YOLO_CONFIG_DIR"):
        assert key in os.environ, key
    assert os.environ["YOLO_AUTOINSTALL"] == "0"


def test_network_guard_catches_a_connection(no_network):
    with pytest.raises(NetworkAttempt):
        urllib.request.urlopen("http://example.com", timeout=1)
    # the guard records the attempt; clear it so this test itself passes
    assert no_network
    no_network.clear()


def test_loopback_is_allowed():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    cli = socket.socket()
    cli.connect(srv.getsockname())
    cli.close()
    srv.close()


def test_pillow_raises_its_own_error_after_ultralytics_is_imported(tmp_path):
    """ultralytics swaps PIL.Image.open for a wrapper that calls pip on an unidentified file; ours undoes it."""
    from PIL import Image, UnidentifiedImageError

    from pipeline.detector import import_ultralytics

    import_ultralytics()
    bad = tmp_path / "not_an_image.png"
    bad.write_text("plain text")
    with pytest.raises(UnidentifiedImageError):
        Image.open(bad)


def test_a_dangling_cache_link_is_a_clear_error(tmp_path, monkeypatch):
    """A `.cache` symlink to a folder that is gone: an error naming the link, not mkdir's FileExistsError
    (pipeline.io.make_dirs, which every atomic write and lock also uses)."""
    from pipeline import offline
    from pipeline.errors import PipelineError
    from pipeline.io import make_dirs, write_text_atomic

    link = tmp_path / ".cache"
    link.symlink_to(tmp_path / "gone")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(link / "ultralytics"))
    with pytest.raises(PipelineError, match=r"\.cache is a symbolic link to .*gone, which does not exist"):
        offline.prepare_ultralytics()
    with pytest.raises(PipelineError, match=r"\.cache is a symbolic link"):
        write_text_atomic(link / "run" / "x.txt", "x")
    (tmp_path / "gone").mkdir()  # once the target exists the folders are made
    make_dirs(link / "ultralytics" / "Ultralytics")
    assert (tmp_path / "gone" / "ultralytics" / "Ultralytics").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(PipelineError, match="a file of that name is in the way"):
        make_dirs(tmp_path / "file" / "sub")
