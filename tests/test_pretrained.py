"""`pretrained.find_verified`: a local checkpoint is used only if its SHA-256 matches, and a weights
folder that does not exist is an error, not a silent download."""

import hashlib

import pytest

from modulenet_jax.errors import UserError
from modulenet_jax.pretrained import find_verified


def test_a_local_checkpoint_must_match_its_sha256(tmp_path):
    f = tmp_path / "w.th"
    f.write_bytes(b"weights")
    assert find_verified("w.th", [tmp_path], hashlib.sha256(b"weights").hexdigest()[:8], "fix") == f
    with pytest.raises(UserError, match="SHA-256 does not start with 00000000; the file is corrupt: fix"):
        find_verified("w.th", [tmp_path], "00000000", "fix")


def test_a_weights_folder_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(UserError, match="weights folder .*nope does not exist"):
        find_verified("w.th", [tmp_path / "nope", tmp_path], None, "fix")
