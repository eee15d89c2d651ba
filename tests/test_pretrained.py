"""`pretrained.find_verified`: a local checkpoint is used only if its SHA-256 matches, and a weights
folder that does not exist is an error, not a silent download; `fetch` downloads (here from a
`file://` URL of the real checkpoint in ../shared) and verifies."""

import hashlib

import pytest

from modulenet_jax import pretrained
from modulenet_jax.errors import UserError
from modulenet_jax.pretrained import find_verified
from tests.conftest import CHECKPOINTS, needs_shared


def test_a_local_checkpoint_must_match_its_sha256(tmp_path):
    f = tmp_path / "w.th"
    f.write_bytes(b"weights")
    assert find_verified("w.th", [tmp_path], hashlib.sha256(b"weights").hexdigest()[:8], "fix") == f
    with pytest.raises(UserError, match="SHA-256 does not start with 00000000; the file is corrupt: fix"):
        find_verified("w.th", [tmp_path], "00000000", "fix")


def test_a_weights_folder_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(UserError, match="weights folder .*nope does not exist"):
        find_verified("w.th", [tmp_path / "nope", tmp_path], None, "fix")


@needs_shared
def test_fetch_downloads_verifies_and_survives_a_second_download_at_once(tmp_path, monkeypatch):
    """The download path as it runs (urllib), from a file:// URL of the real ResNet-20 checkpoint:
    the file lands in the weights cache, verified; a second fetch of the same checkpoint that runs
    to its end while the first is downloading (two searches on a fresh machine) leaves both whole,
    and no partial file stays; a file that does not match its SHA-256 is refused and not kept."""
    import dataclasses
    import urllib.request

    monkeypatch.setenv("MODULENET_CACHE", str(tmp_path / "cache"))
    info = pretrained.PRETRAINED["cifar_resnet20"]
    monkeypatch.setitem(pretrained.PRETRAINED, "cifar_resnet20",
                        dataclasses.replace(info, url=CHECKPOINTS[20].resolve().as_uri()))
    retrieve, other = urllib.request.urlretrieve, []

    def meanwhile(url, path):
        out = retrieve(url, path)
        if not other:
            other.append(None)
            other[0] = pretrained.fetch("cifar_resnet20")
        return out

    monkeypatch.setattr(urllib.request, "urlretrieve", meanwhile)
    got = pretrained.fetch("cifar_resnet20")
    assert got == other[0] == tmp_path / "cache" / "weights" / info.filename
    assert got.read_bytes() == CHECKPOINTS[20].read_bytes()
    assert sorted(p.name for p in got.parent.iterdir()) == [info.filename]
    got.unlink()
    monkeypatch.setitem(pretrained.PRETRAINED, "cifar_resnet20",
                        dataclasses.replace(info, url=CHECKPOINTS[32].resolve().as_uri()))
    with pytest.raises(UserError, match="does not match SHA-256 prefix 12fca82f"):
        pretrained.fetch("cifar_resnet20")
    assert not list(got.parent.iterdir())
