"""Bundles at paths the kernel escapes in /proc/self/mountinfo (issue 13
item 8): a mount point with a space is still found as the rootfs's parent
mount, so a shared one is made private before pivot_root."""
import os
import subprocess

import pytest

from conftest import Bundle, run


@pytest.fixture
def shared_mount_with_space(tmp_path):
    d = tmp_path / "with space"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(d)], check=True)
    subprocess.run(["mount", "--make-shared", str(d)], check=True)
    yield str(d)
    subprocess.run(["umount", "-l", str(d)], check=False)


def test_rootfs_under_a_shared_mount_point_with_a_space(tmp_path, shim, rootfs_template, shared_mount_with_space,
                                                         cid):
    b = Bundle(os.path.join(shared_mount_with_space, "bundle"), rootfs_template)
    b.config["linux"]["rootfsPropagation"] = "shared"
    b.args("true")
    r = shim("run", "--bundle", b.path, cid)
    assert r.returncode == 0, r.stderr.decode()
